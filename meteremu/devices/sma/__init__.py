"""The emulated SMA Energy Meter (``type: sma_energy_meter``): what SMA inverters and storage read.

The registry entry (``meteremu.devices``): ``Options`` for the config
validator and ``make_device``, which imports the sender only when a config
has such a device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.devices.sma.options import Options

if TYPE_CHECKING:
    from meteremu.devices.base import DeviceContext
    from meteremu.devices.sma.service import SmaService

__all__ = ["Options", "make_device", "preload"]


def preload() -> None:
    """Import the sender (see ``meteremu.devices.preload``)."""
    import meteremu.devices.sma.service  # noqa: F401


def make_device(options: Options, ctx: DeviceContext) -> SmaService:
    from meteremu.devices.sma.service import build

    return build(options, ctx)
