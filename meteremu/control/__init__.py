"""Active control of several batteries on one meter (pure; see ``controller``).

One :class:`~meteremu.control.controller.Controller` per meter, shared by
every device that serves it (:func:`shared`), so a CT002 and a Shelly face on
one meter steer their batteries together.
"""

from __future__ import annotations

import weakref

from meteremu.control.controller import Controller, Quality
from meteremu.control.options import ControlOptions
from meteremu.meter import IClock, Meter

__all__ = ["ControlOptions", "Controller", "Quality", "controller_for", "shared"]

_BY_METER: weakref.WeakKeyDictionary[Meter, Controller] = weakref.WeakKeyDictionary()


def shared(meter: Meter, clock: IClock, options: ControlOptions) -> Controller:
    """The controller of ``meter`` (the first device's options set it up)."""
    controller = _BY_METER.get(meter)
    if controller is None:
        controller = _BY_METER[meter] = Controller(clock, options)
        controller.follow(meter)
    return controller


def controller_for(meter: Meter) -> Controller | None:
    """The controller of ``meter``, if a device steers its batteries (exporters read it)."""
    return _BY_METER.get(meter)
