"""The device type registry: what meteremu can pretend to be.

Each entry names a module that provides ``Options`` (a frozen dataclass with a
``meter`` field) and ``make_device_services(...)``; see ``meteremu.tap``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

DEVICE_MODULES: dict[str, str] = {
    "shelly_pro_3em": "meteremu.devices.shelly",
}


def device_module(kind: str) -> ModuleType:
    return importlib.import_module(DEVICE_MODULES[kind])


def option_types() -> dict[str, Any]:
    """``{type name: Options dataclass}`` for the config validator."""
    return {kind: device_module(kind).Options for kind in DEVICE_MODULES}
