"""An ESPHome device's sensors as the meter (``source: {type: esphome, host: …, values: …}``), over
ESPHome's native API (encrypted with the device's key).

For the many home-made readers built on ESPHome (an IR head on the smart
meter, a PZEM or an ATM90E32 board, a CT clamp): the configured sensor
entities, by object_id or name, feed per phase or total power, and
optionally voltage, current, pf, frequency and the energy counters.

:mod:`.options` holds the options, :mod:`.parse` the pure part (entities →
bindings, states → Readings, freshness), :mod:`.errors` the failure
verdicts, :mod:`.source` aioesphomeapi's client on the reactor's asyncio loop.
Validating a config imports no aioesphomeapi (it is an extra:
``pip install 'meteremu[esphome]'``). User documentation: docs/sources.md, "ESPHome".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.esphome.options import EsphomeOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

Options = EsphomeOptions
PUSH = True  # the device pushes states; freshness follows the connection and max_age


def make_source(meter: Meter, options: EsphomeOptions, reactor: IReactor, store: StateStore | None = None) -> Service:
    from meteremu.sources.esphome.source import EsphomeSource

    return EsphomeSource(meter, options, reactor)


__all__ = ["PUSH", "Options", "make_source"]
