"""Registry entry of ``marstek_ct003``: an emulated Marstek CT003 (see ``ct.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.devices.marstek.options import Ct003Options as Options

if TYPE_CHECKING:
    from meteremu.devices.base import DeviceContext
    from meteremu.devices.marstek.service import CtService

__all__ = ["Options", "make_device", "preload"]


def preload() -> None:
    import meteremu.devices.marstek.service  # noqa: F401


def make_device(options: Options, ctx: DeviceContext) -> CtService:
    from meteremu.devices.marstek.service import build

    return build(options, ctx)
