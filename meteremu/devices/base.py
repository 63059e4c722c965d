"""The contract between the application and a device plug-in (``meteremu.devices``)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application.service import IServiceCollection
from twisted.internet.defer import Deferred

from meteremu.connections import ConnectionRegistry
from meteremu.exporters.prometheus import Metrics
from meteremu.interfaces import IReactor
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.store import Store
from meteremu.web.sites import Sites

log = logger(__name__)


@dataclass(frozen=True)
class DeviceContext:
    """What a device plug-in is given to wire itself into the running service."""

    index: int  # position in ``devices:``: the store keys of the device (its MAC) use it
    reactor: IReactor
    store: Store
    metrics: Metrics
    meters: MeterSet
    sites: Sites
    host: str  # server.host: the default address of the device's listeners
    connections: ConnectionRegistry | None = None  # the caps TCP listeners share (meteremu.connections)

    def meter(self, name: str | None) -> Meter:
        """The meter the device serves (``None``: the first one)."""
        return self.meters[name] if name is not None else self.meters.values()[0]

    def mac(self, configured: str, generate: Callable[[], str], client: str | None = None) -> str:
        """The configured MAC, or with ``auto`` one generated once and kept in the store.

        Keyed by position, not name: renaming a device must not change its
        MAC (Home Assistant's unique id is derived from it). ``client`` (an
        IP of the device's ``clients:``) keeps that client's own MAC.
        """
        if configured != "auto":
            return configured
        key = f"device:{self.index}:mac" if client is None else f"device:{self.index}:client:{client}:mac"
        mac = self.store.get(key)
        if mac is not None and not (isinstance(mac, str) and re.fullmatch(r"[0-9A-F]{12}", mac)):
            self.store.report(key, "was not a MAC; a new one was generated (clients see a new device)")
            mac = None
        if mac is None:
            mac = generate()
            self.store.put(key, mac)
            log.info("generated MAC {mac} for {key} (kept in the store)", mac=mac, key=key)
        return mac


class FaceIdentity(Protocol):
    device_id: str
    model: str
    fw_id: str
    serial: str | None
    manufacturer: str


class Clients(Protocol):
    def overview(self) -> list[dict[str, Any]]: ...
    def active_batteries(self) -> list[str]: ...


class Face(Protocol):
    """What the overview, the metrics and the dashboard read of any emulated device."""

    identity: FaceIdentity
    meter: Meter
    clients: Clients


class DeviceService(Protocol):
    """A running device (an ``IService``): its face, and when it is ready.

    ``ready()`` fires once every listener and announcement of the device is
    up, and fails with the first start-up error.
    """

    device: Face

    def ready(self) -> Deferred[Any]: ...
    def setServiceParent(self, parent: IServiceCollection) -> Any: ...


def random_mac(oui: str, rng: random.Random | None = None) -> str:
    """``oui`` (6 hex digits) + 6 random hex digits, upper case."""
    rng = rng or random.SystemRandom()
    return oui + "".join(rng.choice("0123456789ABCDEF") for _ in range(6))
