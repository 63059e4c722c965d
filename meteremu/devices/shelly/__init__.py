"""The emulated Shelly Pro 3EM: one RPC core, many transports.

The registry entry (``meteremu.devices``): ``Options`` for the config
validator and ``make_device``, which imports the transports only when a
config has such a device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.devices.shelly.options import Options

if TYPE_CHECKING:
    from meteremu.devices.base import DeviceContext
    from meteremu.devices.shelly.service import ShellyService

__all__ = ["Options", "make_device", "preload"]


def preload() -> None:
    """Import the transports (see ``meteremu.devices.preload``)."""
    import meteremu.devices.shelly.service  # noqa: F401


def make_device(options: Options, ctx: DeviceContext) -> ShellyService:
    from meteremu.devices.shelly.service import build

    return build(options, ctx)
