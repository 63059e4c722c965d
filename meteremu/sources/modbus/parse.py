"""A register map → read plan → Reading. Pure.

:class:`RegisterMap` holds ``(key, index, register)`` triples (a preset's or
the config's), plans the batched reads once, and turns the answers into a
Reading with the quantity logic every source shares
(:func:`meteremu.sources.values.reading_parts`). A value that is NaN, not
finite or out of range refuses the whole sample, naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from meteremu.reading import Reading
from meteremu.sources.modbus.options import ModbusRegister
from meteremu.sources.modbus.registers import Block, RegisterProblem, decode, pick, plan, words
from meteremu.sources.values import (
    CURRENT,
    DEFAULT_UNIT,
    FREQUENCY,
    KEY_KIND,
    POWER,
    POWER_FACTOR,
    VOLTAGE,
    reading_parts,
    unit_factor,
)

NOT_IMPLEMENTED = {"int16": (-32768.0,), "uint16": (65535.0,), "int32": (-2147483648.0,),
                   "uint32": (4294967295.0,)}
"""SunSpec's "not implemented" markers (checked for SunSpec-style values, those with a scale register)."""

LIMITS = {VOLTAGE: 1000.0, CURRENT: 1000.0, FREQUENCY: 70.0, POWER_FACTOR: 1.0}


class ValueRefused(ValueError):
    """A value that cannot be served: the sample is refused."""


@dataclass(frozen=True)
class RegisterMap:
    items: tuple[tuple[str, int, ModbusRegister], ...]
    max_gap: int = 16

    @property
    def blocks(self) -> list[Block]:
        spans = [(r.table, r.address, words(r.type)) for _, _, r in self.items]
        spans += [(r.table, r.scale_register, 1) for _, _, r in self.items if r.scale_register is not None]
        return plan(spans, self.max_gap)

    def describe(self) -> dict[str, str]:
        return {f"{key}[{index}]" if index else key: f"{r.table} {r.address} {r.type}"
                for key, index, r in self.items}

    def values(self, blocks: Sequence[Block], data: Sequence[Sequence[int]], max_power: float
               ) -> dict[tuple[str, int], float]:
        out: dict[tuple[str, int], float] = {}
        for key, index, r in self.items:
            registers = pick(blocks, data, r.table, r.address, words(r.type))
            try:
                raw = decode(registers, r.type, r.word_order, r.byte_order)
            except RegisterProblem as exc:
                raise ValueRefused(f"{key} ({r.table} register {r.address}): {exc}") from None
            kind = KEY_KIND[key]
            scale = r.scale
            if r.scale_register is not None:
                (sf,) = pick(blocks, data, r.table, r.scale_register, 1)
                sf = sf - 0x10000 if sf >= 0x8000 else sf
                if not -10 <= sf <= 10:  # SunSpec's range; 0x8000 is "not implemented"
                    raise ValueRefused(f"{key}: scale factor register {r.scale_register} = {sf} (not implemented?)")
                scale *= 10.0 ** sf
            if raw in NOT_IMPLEMENTED.get(r.type, ()) and r.scale_register is not None:
                raise ValueRefused(f"{key} ({r.table} register {r.address}): the device does not implement it")
            value = raw * scale * float(unit_factor(kind, r.unit if r.unit is not None else DEFAULT_UNIT[kind])) * (-1 if r.invert else 1)
            top = max_power if kind == POWER else LIMITS.get(kind)
            if not math.isfinite(value) or (top is not None and abs(value) > top):
                raise ValueRefused(f"{key} ({r.table} register {r.address}) = {value:g} is out of range")
            out[(key, index)] = value
        return out

    def reading(self, blocks: Sequence[Block], data: Sequence[Sequence[int]], measured_at: float,
                max_power: float, invert: bool) -> Reading:
        values = self.values(blocks, data, max_power)
        keys = {key for key, _, _ in self.items}

        def value(key: str) -> float | None:
            found = [v for (k, _), v in values.items() if k == key]
            return sum(found) if found else None

        phases, energy = reading_parts(keys, value, invert)
        return Reading(phases=phases, measured_at=measured_at, energy=energy)
