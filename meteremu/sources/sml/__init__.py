"""An SML infrared reading head on a serial port or behind a TCP bridge (``source: {type: sml, …}``).

German and Austrian smart meters (eHZ, EBZ, EMH, ISKRA, Holley, DZG…) push an
SML frame every 1-4 s through their optical interface. :mod:`.options` holds
the options, :mod:`meteremu.sources.smlparse` the decoding (smllib, pure),
:mod:`.source` the connection. Validating a config imports neither smllib nor
pyserial. User documentation: docs/sources.md, "SML reading head".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.sml.options import SmlOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

Options = SmlOptions
PUSH = False  # freshness follows interval (the meter's send period)


def make_source(meter: Meter, options: SmlOptions, reactor: IReactor, store: StateStore | None = None) -> Service:
    from meteremu.sources.sml.source import SmlSource

    return SmlSource(meter, options, reactor)


__all__ = ["PUSH", "Options", "make_source"]
