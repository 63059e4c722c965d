"""A meter read over Modbus TCP, or RTU frames over TCP (``source: {type: modbus, …}``).

A register map from the config (``values``: one register per quantity, with
its table, type, byte and word order, scale and unit) or a preset (Eastron
SDM630/SDM120, Chint DTSU666, or the SunSpec meter models 201-204 found from
``sunspec_base``). :mod:`.options` holds the options, :mod:`.registers` and
:mod:`.parse` the pure decoding and read plan, :mod:`.presets` the makers'
register tables, :mod:`.sunspec` the discovery (pysunspec2's model
definitions), :mod:`.source` pymodbus' client on the reactor's loop.
Validating a config imports neither pymodbus nor pysunspec2. User
documentation: docs/sources.md, "Modbus".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.modbus.options import ModbusOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

Options = ModbusOptions
PUSH = False  # freshness follows interval (the poll period)


def make_source(meter: Meter, options: ModbusOptions, reactor: IReactor, store: StateStore | None = None) -> Service:
    from meteremu.sources.modbus.source import ModbusSource

    return ModbusSource(meter, options, reactor)


__all__ = ["PUSH", "Options", "make_source"]
