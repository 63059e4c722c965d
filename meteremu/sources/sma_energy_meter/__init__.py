"""The SMA Energy Meter / Sunny Home Manager read over Speedwire
(``source: {type: sma_energy_meter, …}``).

The meter multicasts a datagram (protocol 0x6069) every second (Home Manager
2.0: up to five a second) to 239.12.255.254:9522, or sends it to one unicast
address; this source listens, keeps the datagrams of the configured serial
(several meters on one LAN all send to the same group) and reads per phase
power, apparent power, current, voltage, power factor, frequency and the
import/export counters. :mod:`.options` holds the options, :mod:`.parse` the
pure decoder, :mod:`.source` the socket. Validating a config opens no socket
and loads no client library. User documentation: docs/sources.md, "SMA
Energy Meter".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.sma_energy_meter.options import SmaEnergyMeterOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

Options = SmaEnergyMeterOptions
PUSH = False  # freshness follows interval: how often the meter sends


def make_source(meter: Meter, options: SmaEnergyMeterOptions, reactor: IReactor,
                store: StateStore | None = None) -> Service:
    from meteremu.sources.sma_energy_meter.source import SmaEnergyMeterSource

    return SmaEnergyMeterSource(meter, options, reactor)


__all__ = ["PUSH", "Options", "make_source"]
