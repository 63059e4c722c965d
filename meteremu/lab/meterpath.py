"""The meter path, as meteremu runs it: MQTT source → Meter → Shelly device → transports.

One meteremu configuration (:func:`meteremu_config`) serves both clocks:

* in real time it is built and started whole (``meteremu.app.build``) with
  the MQTT source on a real broker, the device on real UDP and HTTP ports;
* on the simulated clock (:class:`SimMeterPath`) the same validated options
  drive the same objects in-process on a ``task.Clock``: the real
  :class:`~meteremu.sources.mqtt.source.MQTTSource` (its broker connection
  replaced by :class:`SimBroker`, which hands it the household's payloads)
  feeds a real :class:`~meteremu.meter.Meter`, a real
  :class:`~meteremu.devices.shelly.device.ShellyDevice` applies the stale
  policy and request-side scaling, and the batteries' polls go through the
  UDP transport's pure core (:func:`~meteremu.devices.shelly.udp.answer_datagram`)
  or the RPC core with the HTTP transport's encoding.

Why the MQTT source: it is a push source fed by whatever publishes the
household's grid, so the same scenario can feed meteremu or any emulator
that reads MQTT (``--feed``), and its options (``expire_after``) give a real
stale path for outage scenarios. Only the broker connection is replaced on the simulated clock: every
rule of the source (debounce, expiry, the heartbeat) is the service's own.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from meteremu import control
from meteremu.config import Config, parse_config
from meteremu.devices.marstek.ct import CtDevice, CtIdentity
from meteremu.devices.marstek.options import CtOptions
from meteremu.devices.shelly import jsonfmt
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.identity import make_identity
from meteremu.devices.shelly.options import Options as ShellyOptions
from meteremu.devices.shelly.rpc import CallContext, RpcError
from meteremu.devices.shelly.udp import answer_datagram
from meteremu.interfaces import IReactor
from meteremu.meter import Meter, default_stale_after
from meteremu.sources.mqtt import MQTTSourceOptions
from meteremu.sources.mqtt.source import MQTTSource

TOPIC = "meteremu-lab/grid"
MAC = "C0FFEE000001"
HTTP_AGENT = "lab-battery"


@dataclass(frozen=True)
class DeviceSetup:
    """How meteremu is set up for a run: the face, the stale policy and the multi-battery mode.

    ``face`` is ``shelly`` (batteries poll EM.GetStatus over UDP/HTTP) or
    ``ct002`` (every battery talks CT002 frames to a ``marstek_ct002``);
    ``control`` turns on active control (the Shelly device's ``control:``, or
    the CT's ``mode: control``; without it a CT relays like a real one).
    """

    on_stale: str | float = "error"  # error, hold, or fallback watts
    scaling: str = "none"  # none, divide, weights
    weights: tuple[tuple[str, float], ...] = ()  # (battery IP or MAC, factor): scaling weights / control
    expire_after: float = 0.0  # the MQTT source's expire_after (0: off)
    face: str = "shelly"  # shelly or ct002
    control: bool = False
    tuning: tuple[tuple[str, Any], ...] = ()  # other keys of the control: section, to tune it in the lab


def payload(phases: tuple[float, float, float]) -> bytes:
    """What the household's meter publishes: one JSON object, W per phase, 0.1 W."""
    a, b, c = (round(p, 1) for p in phases)
    return json.dumps({"a": a, "b": b, "c": c}, separators=(",", ":")).encode()


def meteremu_config(setup: DeviceSetup, broker_port: int = 1883, udp_ports: tuple[int, ...] = (1010, 2220),
                    http_port: int = 0, state_dir: str | None = None, ct_port: int = 12345) -> Config:
    """The meteremu configuration of a lab run (validated by meteremu's own parser)."""
    source: dict[str, Any] = {"type": "mqtt", "host": "127.0.0.1", "port": broker_port, "topic": TOPIC,
                              "values": {"a_power": "$.a", "b_power": "$.b", "c_power": "$.c"}}
    if setup.expire_after:
        source["expire_after"] = f"{setup.expire_after:g}s"
    scaling: dict[str, Any] = {"mode": setup.scaling}
    if setup.scaling == "weights":
        scaling["weights"] = dict(setup.weights)
    on_stale: Any = setup.on_stale if isinstance(setup.on_stale, str) else {"fallback": setup.on_stale}
    device: dict[str, Any] = {"type": "shelly_pro_3em", "meter": "grid", "mac": MAC, "udp_ports": list(udp_ports),
                              "udp_bind": "127.0.0.1", "on_stale": on_stale, "scaling": scaling, "websocket": False}
    if setup.control:
        device["control"] = {"weights": dict(setup.weights), **dict(setup.tuning)}
    if setup.face == "ct002":
        device = {"type": "marstek_ct002", "meter": "grid", "mac": MAC, "udp_port": ct_port,
                  "udp_bind": "127.0.0.1", "on_stale": on_stale,
                  "mode": "control" if setup.control else "relay",
                  "control": {"weights": dict(setup.weights), **dict(setup.tuning)}}
    state = state_dir or tempfile.gettempdir()
    data = {"server": {"host": "127.0.0.1", "http_port": http_port},
            "store": {"path": os.path.join(state, "meteremu-lab-state.db"), "persist_interval": "1h"},
            "meters": {"grid": {"source": source}}, "devices": [device]}
    return parse_config(data, "(meteremu-lab)", env={})


EPOCH = 1_750_000_000.0  # the simulated clock's start (a fixed instant: runs are reproducible)


def sim_clock(start: float = EPOCH) -> Clock:
    """The simulated clock the source, Meter, device and client tracker read and schedule on."""
    clock = Clock()
    clock.advance(start)
    return clock


class SimBroker:
    """The MQTT source's broker connection on the simulated clock: always up, fed by the lab.

    It has the shape of the source's ``client_factory`` product (the real one
    is :class:`~meteremu.compat.paho.ReactorMQTTClient`), so the source runs
    unchanged; :meth:`publish` is a message arriving on a subscribed topic.
    """

    def __init__(self, settings: Any, reactor: Any, *, on_message: Callable[[str, bytes, bool], None],
                 on_connected: Callable[[], None], **_callbacks: Any) -> None:
        self.connected = False
        self.topics: list[str] = []
        self._on_message, self._on_connected = on_message, on_connected

    def subscribe(self, topic: str, qos: int) -> None:
        self.topics.append(topic)

    def start(self) -> None:
        self.connected = True
        self._on_connected()

    def stop(self) -> Deferred[None]:
        self.connected = False
        return succeed(None)

    def publish(self, topic: str, data: bytes) -> None:
        if self.connected and topic in self.topics:
            self._on_message(topic, data, False)


class SimMeterPath:
    """meteremu's meter path in-process on a simulated clock (see the module docstring)."""

    def __init__(self, setup: DeviceSetup, clock: Clock) -> None:
        config = meteremu_config(setup)
        mc = config.meters["grid"]
        options = mc.source.options
        assert isinstance(options, MQTTSourceOptions)
        self.clock = clock
        self.meter = Meter("grid", clock, source_type="mqtt")
        self.meter.stale_after = mc.stale_after or default_stale_after(None, push=True)
        # With SimBroker as its connection the source only reads and schedules on the clock.
        self.source = MQTTSource(self.meter, options, cast(IReactor, clock), client_factory=SimBroker)
        device_options = config.devices[0].options
        self.ct: CtDevice | None = None
        if isinstance(device_options, CtOptions):
            controller = control.shared(self.meter, clock, device_options.control)
            identity = CtIdentity(MAC, f"ct002-{MAC.lower()}", device_options.ct_type)
            self.ct = CtDevice(device_options, identity, self.meter, clock, controller)
            device_options = ShellyOptions(meter="grid")  # unused: nothing polls it
        assert isinstance(device_options, ShellyOptions)
        self.device = ShellyDevice(device_options, make_identity(device_options, MAC), self.meter, clock,
                                   udp_ports=device_options.udp_ports, temperature=lambda: None)
        self.max_bytes = device_options.udp_max_bytes
        self._contexts: dict[tuple[str, str], CallContext] = {}
        self.source.startService()
        self.broker: SimBroker = self.source.client

    def deliver(self, data: bytes) -> None:
        """One message on the topic arrives now."""
        self.broker.publish(TOPIC, data)

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

    def poll_ct(self, ip: str, request: bytes) -> bytes | None:
        """A battery's CT002 request through the CT's core; None: no reply."""
        assert self.ct is not None
        reply, _dropped = self.ct.answer(request, ip, 22222)
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
