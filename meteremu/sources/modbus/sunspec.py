"""SunSpec meter discovery (models 201-204) with pysunspec2's model definitions.

From ``sunspec_base``: the marker ``SunS`` (0x5375 0x6E53), then models of
``(id, length)`` headers up to the end marker 0xFFFF. The first meter model
(201 single phase, 202 split phase, 203 wye, 204 delta) is taken; the
offsets, types and scale-factor points of its values come from pysunspec2's
JSON definition of the model (never typed in here), so the map follows the
SunSpec Alliance's published models. :func:`meter_map` is pure;
:func:`discover` does the reads.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

from meteremu.sources.modbus.options import ModbusOptions, ModbusRegister
from meteremu.sources.modbus.parse import RegisterMap

MARKER = [0x5375, 0x6E53]  # "SunS"
END = 0xFFFF
METER_MODELS = (201, 202, 203, 204)
MAX_MODELS = 64

_TYPES = {"int16": "int16", "uint16": "uint16", "acc32": "uint32", "uint32": "uint32", "int32": "int32",
          "float32": "float32"}
_UNITS = {"Pct": "%", "W": "W", "V": "V", "A": "A", "Hz": "Hz", "Wh": "Wh"}
# Our keys and the model's point names (per phase where the model has phases).
_POINTS = {"power": "W", "frequency": "Hz", "energy_import": "TotWhImp", "energy_export": "TotWhExp"}
_PHASE_POINTS = {"voltage": "PhVph{}", "current": "Aph{}", "pf": "PFph{}"}
PHASES_OF = {201: "A", 202: "AB", 203: "ABC", 204: "ABC"}


class SunSpecError(ValueError):
    pass


@cache
def model_points(model_id: int) -> dict[str, tuple[int, dict[str, Any]]]:
    """``{point name: (offset from the model's ID register, point)}`` from pysunspec2's definition."""
    from importlib.resources import files

    text = (files("sunspec2") / "models" / "json" / f"model_{model_id}.json").read_text(encoding="utf-8")
    points, offset = {}, 0
    for point in json.loads(text)["group"]["points"]:
        points[point["name"]] = (offset, point)
        offset += int(point["size"])
    return points


def meter_map(model_id: int, start: int, max_gap: int) -> RegisterMap:
    """The register map of meter model ``model_id`` whose ID register is at ``start``."""
    points = model_points(model_id)

    def register(name: str) -> ModbusRegister:
        offset, point = points[name]
        sf = point.get("sf")
        return ModbusRegister(address=start + offset, table="holding", type=_TYPES[point["type"]],  # type: ignore[arg-type]
                              unit=_UNITS.get(point.get("units") or ""),
                              scale_register=start + points[sf][0] if isinstance(sf, str) else None)

    items: list[tuple[str, int, ModbusRegister]] = []
    phases = PHASES_OF[model_id]
    if model_id == 201:
        items.append(("power", 0, register("W")))
    else:
        items += [(f"{p.lower()}_power", 0, register(f"Wph{p}")) for p in phases]
    for key, pattern in _PHASE_POINTS.items():
        items += [(f"{p.lower()}_{key}", 0, register(pattern.format(p))) for p in phases]
    items += [(key, 0, register(name)) for key, name in _POINTS.items() if key != "power"]
    return RegisterMap(tuple(items), max_gap)


async def discover(read: Callable[[str, int, int], Awaitable[list[int]]], options: ModbusOptions) -> RegisterMap:
    """Walk the models from ``sunspec_base``; the map of the first meter model."""
    base = options.sunspec_base
    if await read("holding", base, 2) != MARKER:
        raise SunSpecError(f"no SunSpec marker (SunS) at holding register {base}: set sunspec_base")
    address = base + 2
    seen = []
    for _ in range(MAX_MODELS):
        model_id, length = await read("holding", address, 2)
        if model_id == END:
            break
        seen.append(model_id)
        if model_id in METER_MODELS:
            return meter_map(model_id, address, options.max_gap)
        address += 2 + length
        if address > 0xFFFF:
            break
    raise SunSpecError(f"no SunSpec meter model (201-204) from register {base}; models found: {seen}")
