"""One emulated EcoTracker, wired: ``GET /v1/json`` on its port, the meter listener, mDNS.

Twisted's HTTP/1.1 server keeps connections open (every answer has a
``Content-Length``), which a Jackery HomePower needs to show the meter online.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from meteremu.devices.base import DeviceContext
from meteremu.devices.ecotracker.device import EcoTracker, generate_mac, make_identity
from meteremu.devices.ecotracker.options import Options
from meteremu.devices.shelly.options import mdns_options
from meteremu.listeners import all_ready


class EcoTrackerService(MultiService):
    def __init__(self, device: EcoTracker) -> None:
        super().__init__()
        self.device = device
        self.mdns: Any = None  # meteremu.devices.shelly.mdns.MdnsService when configured

    def startService(self) -> None:
        self.device.meter.add_listener(self.device.on_reading)
        super().startService()

    def stopService(self) -> Any:
        self.device.meter.remove_listener(self.device.on_reading)
        return super().stopService()

    def ready(self) -> Deferred[Any]:
        return all_ready([self.mdns.ready] if self.mdns is not None else [])


def build(options: Options, ctx: DeviceContext) -> EcoTrackerService:
    identity = make_identity(options, ctx.mac(options.mac, generate_mac))
    device = EcoTracker(options, identity, ctx.meter(options.meter), ctx.reactor)
    service = EcoTrackerService(device)
    app = ctx.sites.app(options.http_port)

    @app.route("/v1/json", methods=["GET"])
    def v1_json(request: IRequest) -> bytes:
        peer = getattr(request.getClientAddress(), "host", None)
        status, payload = device.answer(peer)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return payload

    mdns = mdns_options(options.mdns)
    if mdns is not None:
        from meteremu.devices.ecotracker.mdns import service_infos
        from meteremu.devices.shelly.mdns import MdnsService

        service.mdns = MdnsService(identity, ctx.sites.real_port(options.http_port), mdns,
                                   reactor=ctx.reactor, service_infos=partial(service_infos, identity))
        service.mdns.setServiceParent(service)
    return service
