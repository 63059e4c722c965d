"""The meter path, as meteremu runs it: MQTT source → Meter → Shelly device → transports.

One meteremu configuration (:func:`meteremu_config`) serves both clocks:

* in real time it is built and started whole (``meteremu.app.build``) with
  the MQTT source on a real broker, the device on real UDP and HTTP ports;
* on the simulated clock (:class:`SimMeterPath`) the same validated options
  drive the same objects in-process: the MQTT source's pure mapping
  (``Combiner``) turns each published payload into a Reading, a real
  :class:`~meteremu.meter.Meter` judges freshness, a real
  :class:`~meteremu.devices.shelly.device.ShellyDevice` applies the stale
  policy and request-side scaling, and the batteries' polls go through the
  UDP transport's pure core (:func:`~meteremu.devices.shelly.udp.answer_datagram`)
  or the RPC core with the HTTP transport's encoding.

Why the MQTT source: it is a push source fed by whatever publishes the
household's grid, so the same scenario can feed meteremu or any emulator
that reads MQTT (``--feed``), and its options (``expire_after``) give a real
stale path for outage scenarios. The service part of the source (the broker
connection) is the only piece replaced on the simulated clock;
:class:`SimMeterPath` repeats its three rules that touch the Meter (a new
Reading → ``update``; down → ``report_failure``; healthy → ``alive`` on
every message and once a second).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from meteremu.config import Config, parse_config
from meteremu.devices.shelly import jsonfmt
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.identity import make_identity
from meteremu.devices.shelly.options import Options as ShellyOptions
from meteremu.devices.shelly.rpc import CallContext, RpcError
from meteremu.devices.shelly.udp import answer_datagram
from meteremu.meter import Meter, default_stale_after
from meteremu.sources.mqtt import MQTTSourceOptions
from meteremu.sources.mqtt.mapping import Combiner, Smoother, layout_from_options

TOPIC = "meteremu-lab/grid"
MAC = "C0FFEE000001"
HEARTBEAT = 1.0  # s: the MQTT source's own heartbeat and expiry check
HTTP_AGENT = "lab-battery"


@dataclass(frozen=True)
class DeviceSetup:
    """How meteremu is set up for a run: the stale policy and multi-battery scaling."""

    on_stale: str | float = "error"  # error, hold, or fallback watts
    scaling: str = "none"  # none, divide, weights
    weights: tuple[tuple[str, float], ...] = ()  # (battery IP, factor) for scaling: weights
    expire_after: float = 0.0  # the MQTT source's expire_after (0: off)


def payload(phases: tuple[float, float, float]) -> bytes:
    """What the household's meter publishes: one JSON object, W per phase, 0.1 W."""
    a, b, c = (round(p, 1) for p in phases)
    return json.dumps({"a": a, "b": b, "c": c}, separators=(",", ":")).encode()


def meteremu_config(setup: DeviceSetup, broker_port: int = 1883, udp_ports: tuple[int, ...] = (1010, 2220),
                    http_port: int = 0, state_dir: str | None = None) -> Config:
    """The meteremu configuration of a lab run (validated by meteremu's own parser)."""
    source: dict[str, Any] = {"type": "mqtt", "host": "127.0.0.1", "port": broker_port, "topic": TOPIC,
                              "values": {"a_power": "$.a", "b_power": "$.b", "c_power": "$.c"}}
    if setup.expire_after:
        source["expire_after"] = f"{setup.expire_after:g}s"
    scaling: dict[str, Any] = {"mode": setup.scaling}
    if setup.scaling == "weights":
        scaling["weights"] = dict(setup.weights)
    on_stale: Any = setup.on_stale if isinstance(setup.on_stale, str) else {"fallback": setup.on_stale}
    device = {"type": "shelly_pro_3em", "meter": "grid", "mac": MAC, "udp_ports": list(udp_ports),
              "udp_bind": "127.0.0.1", "on_stale": on_stale, "scaling": scaling, "websocket": False}
    state = state_dir or tempfile.gettempdir()
    data = {"server": {"host": "127.0.0.1", "http_port": http_port},
            "store": {"path": os.path.join(state, "meteremu-lab-state.db"), "persist_interval": "1h"},
            "meters": {"grid": {"source": source}}, "devices": [device]}
    return parse_config(data, "(meteremu-lab)", env={})


class SimClock:
    """The simulated clock the Meter, device and client tracker read."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.epoch = start
        self.now = start

    def seconds(self) -> float:
        return self.now


class SimMeterPath:
    """meteremu's meter path in-process on a :class:`SimClock` (see the module docstring)."""

    def __init__(self, setup: DeviceSetup, clock: SimClock) -> None:
        config = meteremu_config(setup)
        mc = config.meters["grid"]
        options = mc.source.options
        assert isinstance(options, MQTTSourceOptions)
        self.clock = clock
        self.meter = Meter("grid", clock, source_type="mqtt")
        self.meter.stale_after = mc.stale_after or default_stale_after(None, push=True)
        self.combiner = Combiner(layout_from_options(options), Smoother.from_options(options.smoothing),
                                 expire_after=options.expire_after)
        device_options = config.devices[0].options
        assert isinstance(device_options, ShellyOptions)
        self.device = ShellyDevice(device_options, make_identity(device_options, MAC), self.meter, clock,
                                   udp_ports=device_options.udp_ports, temperature=lambda: None)
        self.max_bytes = device_options.udp_max_bytes
        self._contexts: dict[tuple[str, str], CallContext] = {}
        self.connected = True  # the source's broker connection

    # -- the source's rules ---------------------------------------------------------
    def deliver(self, data: bytes) -> None:
        """One message on the topic arrives now."""
        outcome = self.combiner.message(TOPIC, data, False, self.clock.seconds())
        if outcome.down is not None:
            self.meter.report_failure(outcome.down, down=True)
        elif outcome.reading is not None:
            self.meter.update(outcome.reading)
        self._heartbeat()

    def tick(self) -> None:
        """Once a second: expiry, then the heartbeat."""
        expiry = self.combiner.expiry(self.clock.seconds())
        if expiry is not None and self.combiner.ready:
            if self.meter.down_reason != expiry:
                self.meter.report_failure(expiry, down=True)
            return
        self._heartbeat()

    def _heartbeat(self) -> None:
        if self.connected and self.meter.latest is not None and self.combiner.healthy(self.clock.seconds()):
            self.meter.alive()

    # -- the batteries' polls ------------------------------------------------------------
    def _context(self, transport: str, ip: str) -> CallContext:
        key = (transport, ip)
        ctx = self._contexts.get(key)
        if ctx is None:
            agent = HTTP_AGENT if transport == "http" else None
            ctx = self._contexts[key] = CallContext(transport, ip, None, "127.0.0.1", agent)
        return ctx

    def poll_udp(self, ip: str, request: bytes) -> bytes | None:
        """A battery's datagram through the UDP transport's core; None: no reply."""
        reply, _dropped = answer_datagram(self.device.core, request, self._context("udp", ip), self.max_bytes)
        return reply

    def poll_http(self, ip: str) -> tuple[int, bytes]:
        """``GET /rpc/EM.GetStatus?id=0`` as the HTTP transport answers it: (status, body)."""
        ctx = self._context("http", ip)
        try:
            return 200, jsonfmt.dumpb(self.device.core.call("EM.GetStatus", {"id": 0}, ctx))
        except RpcError as err:
            self.device.core.report_error(err.code, ctx)
            return (503 if err.code == -114 else 500), jsonfmt.dumpb(err.as_dict())


def udp_request(request_id: int) -> bytes:
    """The poll a Marstek battery sends (the compact form they all use)."""
    return b'{"id":%d,"method":"EM.GetStatus","params":{"id":0}}' % request_id


def served_total(body: bytes, envelope: bool) -> float | None:
    """``total_act_power`` of an answer (a UDP frame or a bare HTTP result); None if absent."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if envelope:
        data = data.get("result") if isinstance(data, dict) else None
    if not isinstance(data, dict):
        return None
    value = data.get("total_act_power")
    return float(value) if isinstance(value, int | float) else None
