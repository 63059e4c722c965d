"""The emulated everHome EcoTracker (``type: everhome_ecotracker``): what EcoFlow STREAM pairs with locally.

The registry entry (``meteremu.devices``): ``Options`` for the config
validator and ``make_device``, which imports the HTTP and mDNS wiring only
when a config has such a device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.devices.ecotracker.options import Options

if TYPE_CHECKING:
    from meteremu.devices.base import DeviceContext
    from meteremu.devices.ecotracker.service import EcoTrackerService

__all__ = ["Options", "make_device", "preload"]


def preload() -> None:
    """Import the wiring (see ``meteremu.devices.preload``)."""
    import meteremu.devices.ecotracker.service  # noqa: F401


def make_device(options: Options, ctx: DeviceContext) -> EcoTrackerService:
    from meteremu.devices.ecotracker.service import build

    return build(options, ctx)
