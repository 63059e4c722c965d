"""One emulated CT wired: its UDP listener, the meter's shared controller and the metrics.

The protocol class only moves bytes: every decision is
:meth:`~meteremu.devices.marstek.ct.CtDevice.answer`. Datagrams over
:data:`~meteremu.devices.marstek.ct_codec.MAX_FRAME` bytes are cut by the
kernel read and then refused by the parser; nothing is answered that was not
a well-formed request from a battery with a slot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol

from meteremu import control
from meteremu.devices.base import DeviceContext, random_mac
from meteremu.devices.marstek import ct_codec
from meteremu.devices.marstek.ct import CtDevice, CtIdentity
from meteremu.devices.marstek.options import CtOptions
from meteremu.interfaces import IReactorTime
from meteremu.listeners import Listener, all_ready, udp_listener
from meteremu.logs import logger
from meteremu.ratelog import RateLimitedLog

log = logger(__name__)

# Hame's (Marstek's maker) addresses are not published as an OUI here: a
# locally administered prefix says honestly that this is not a real CT.
CT_OUI = "02CA7E"


class CtUDP(DatagramProtocol):
    def __init__(self, device: CtDevice, clock: IReactorTime, on_drop: Callable[[str], None],
                 observe_latency: Callable[[str, float], None]) -> None:
        self.device, self.on_drop, self.observe_latency = device, on_drop, observe_latency
        self.warnings = RateLimitedLog(log, clock)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        started = time.perf_counter()
        try:
            reply, dropped = self.device.answer(data, addr[0], addr[1])
        except Exception:
            if self.device.dropped.get("error", 0) == 0:
                log.failure("answering a CT request from {addr} failed", addr=addr[0])
            self.device.dropped["error"] = self.device.dropped.get("error", 0) + 1
            reply, dropped = None, "error"
        if dropped is not None or reply is None:
            self.on_drop(dropped or "error")
            return
        assert self.transport is not None
        try:
            self.transport.write(reply, addr)
        except OSError as exc:
            self.warnings.warn("send", "cannot answer {addr}: {why}", addr=addr[0], why=str(exc))
            self.on_drop("send_error")
            return
        self.observe_latency("udp", time.perf_counter() - started)


class CtService(MultiService):
    def __init__(self, device: CtDevice) -> None:
        super().__init__()
        self.device = device
        self.udp: Listener | None = None

    def ready(self) -> Deferred[Any]:
        return all_ready([self.udp.ready] if self.udp is not None else [])


def build(options: CtOptions, ctx: DeviceContext) -> CtService:
    mac = ctx.mac(options.mac, lambda: random_mac(CT_OUI)).replace(":", "").upper()
    model = options.ct_type
    identity = CtIdentity(mac=mac, device_id=f"{options.KIND}-{mac.lower()}", model=model)
    meter = ctx.meter(options.meter)
    controller = control.shared(meter, ctx.reactor, options.control) if options.mode == "control" else None
    device = CtDevice(options, identity, meter, ctx.reactor, controller)
    service = CtService(device)
    inc = ctx.metrics.dropped.inc
    requests = ctx.metrics.requests.inc
    device_id = identity.device_id

    def observe_latency(transport: str, seconds: float) -> None:
        requests(device_id, transport, "CT.Request")
        ctx.metrics.observe_latency(transport, seconds)

    host = options.udp_bind or ctx.host
    proto = CtUDP(device, ctx.reactor, lambda reason: inc(device_id, reason), observe_latency)
    listener = udp_listener(ctx.reactor, options.udp_port, proto, host, what=f"Marstek {model} UDP",
                            max_packet_size=ct_codec.MAX_FRAME + 1)
    listener.setServiceParent(service)
    service.udp = listener
    return service
