"""DSMR / P1 smart meters (``source: {type: dsmr, serial: …}`` or ``tcp: host:port``).

``parse`` is the pure part (framing, CRC, spec detection, telegram → Reading),
``source`` the Twisted part (serial port or TCP stream, idle watchdog,
reconnects, line-setting probing), ``options`` the configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.dsmr.options import DsmrOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

Options = DsmrOptions
PUSH = False  # telegrams come every `interval`; stale_after defaults to 3x that


def make_source(meter: Meter, options: DsmrOptions, reactor: IReactor, store: StateStore | None = None) -> Service:
    from meteremu.sources.dsmr.source import DsmrSource

    return DsmrSource(meter, options, reactor)
