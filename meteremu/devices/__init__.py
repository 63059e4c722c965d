"""The device type registry: what meteremu can pretend to be.

Each entry names a module that provides ``Options`` (a frozen dataclass with a
``meter`` field); ``meteremu.app`` builds the device's services.
"""

from __future__ import annotations

from meteremu.registry import LazyOptions

DEVICE_MODULES: dict[str, str] = {
    "shelly_pro_3em": "meteremu.devices.shelly",
}

_options = LazyOptions(DEVICE_MODULES)


def option_types() -> LazyOptions:
    """``{type name: Options dataclass}`` for the config validator (lazy)."""
    return _options
