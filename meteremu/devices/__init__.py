"""The device registry: what meteremu can pretend to be, as plug-ins.

Each entry names a module that provides ``Options`` (a frozen dataclass with
a ``meter`` field, built by the config validator) and
``make_device(options, ctx) -> DeviceService``: a ``Service`` (usually a
``MultiService``) holding everything the face needs (routes on the HTTP
sites, its listeners, notifiers, announcements), wired from the
:class:`~meteremu.devices.base.DeviceContext`. ``meteremu.app`` only loops over the configured
devices; a device module is imported only when a config uses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType

from meteremu.registry import LazyOptions

DEVICE_MODULES: dict[str, str] = {
    "shelly_pro_3em": "meteremu.devices.shelly",
    "shelly_em_gen3": "meteremu.devices.shelly.em_gen3",
    "shelly_pro_em50": "meteremu.devices.shelly.pro_em50",
    "everhome_ecotracker": "meteremu.devices.ecotracker",
    "sma_energy_meter": "meteremu.devices.sma",
    "marstek_ct002": "meteremu.devices.marstek.ct002",
    "marstek_ct003": "meteremu.devices.marstek.ct003",
}

_options = LazyOptions(DEVICE_MODULES)


def option_types() -> LazyOptions:
    """``{type name: Options dataclass}`` for the config validator (lazy)."""
    return _options


def device_module(kind: str) -> ModuleType:
    return _options.module(kind)


def preload(kinds: Iterable[str]) -> None:
    """Import the wiring of these device types now (a module's optional ``preload()``).

    ``twistd meteremu`` calls this while TLS support is still hidden
    (``meteremu.compat.lazytls``): device transports never use TLS, and Twisted's
    own modules they import would otherwise load pyOpenSSL with them.
    """
    for kind in sorted(set(kinds)):
        getattr(device_module(kind), "preload", lambda: None)()
