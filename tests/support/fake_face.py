"""A device plug-in that is not a Shelly: proves ``meteremu.devices`` is a real registry.

Registered by tests only (``DEVICE_MODULES["test_face"]``). It serves the
meter's total power on ``GET /face`` of the device's HTTP port, through the
same :class:`~meteremu.devices.base.DeviceContext` every face gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.web.iweb import IRequest

from meteremu.devices.base import DeviceContext, random_mac


@dataclass(frozen=True)
class Options:
    meter: str | None = None
    greeting: str = "hello"
    http_port: int | None = None
    mac: str = "auto"


@dataclass(frozen=True)
class Identity:
    device_id: str
    model: str = "FACE-1"
    fw_id: str = "1.0"
    serial: str | None = None
    manufacturer: str = "meteremu tests"


class FaceDevice:
    def __init__(self, identity: Identity, meter: Any, options: Options) -> None:
        from meteremu.devices.shelly.clients import ClientTracker

        self.identity, self.meter, self.options = identity, meter, options
        self.clients = ClientTracker(meter.clock)


class FaceService(MultiService):
    def __init__(self, device: FaceDevice) -> None:
        super().__init__()
        self.device = device

    def ready(self) -> Deferred[Any]:
        return succeed(None)


def make_device(options: Options, ctx: DeviceContext) -> FaceService:
    mac = ctx.mac(options.mac, lambda: random_mac("B43A45"))
    device = FaceDevice(Identity(f"face-{mac.lower()}"), ctx.meter(options.meter), options)

    @ctx.sites.app(options.http_port).route("/face", methods=["GET"])
    def face(request: IRequest) -> bytes:
        latest = device.meter.latest
        return f"{options.greeting} {latest.total_act_power:.1f} W".encode()

    return FaceService(device)
