"""Kamstrup registers: the catalogue and KMP register values → extras. Pure.

A heat meter has no electrical phases: a reading carries only extras — heat
energy in kWh (converted from GJ/MWh/Gcal as the meter reports it), volume in
m³, flow in l/h, thermal power in W, temperatures in °C. The wire codec is
:mod:`.kmp`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from meteremu.sources.kamstrup import kmp


@dataclass(frozen=True, slots=True)
class Register:
    id: int
    quantity: str  # the kmp.convert quantity: kwh, w, m3, lph, c, k, h, bar, ""
    key: str  # the extras key when the unit converts


# MULTICAL 402/403/602/603 (spec §3; PyKMP constants.py).
REGISTERS: dict[str, Register] = {
    "heat_energy": Register(0x003C, "kwh", "heat_energy_kwh"),
    "heat_energy_hires": Register(0x010A, "kwh", "heat_energy_hires_kwh"),
    "volume": Register(0x0044, "m3", "volume_m3"),
    "flow": Register(0x004A, "lph", "flow_lph"),
    "power": Register(0x0050, "w", "heat_power_w"),
    "temp_inlet": Register(0x0056, "c", "temp_inlet_c"),
    "temp_outlet": Register(0x0057, "c", "temp_outlet_c"),
    "temp_t3": Register(0x0058, "c", "temp_t3_c"),
    "temp_diff": Register(0x0059, "k", "temp_diff_k"),
    "temp_t4": Register(0x007A, "c", "temp_t4_c"),
    "pressure_inlet": Register(0x005B, "bar", "pressure_inlet_bar"),
    "pressure_outlet": Register(0x005C, "bar", "pressure_outlet_bar"),
    "info": Register(0x0063, "", "info_code"),
    "operating_hours": Register(0x03EC, "h", "operating_hours"),
}
DEFAULT_REGISTERS = ("heat_energy", "volume", "flow", "power", "temp_inlet", "temp_outlet",
                     "temp_diff", "operating_hours")


def resolve_register(name: str) -> Register:
    """A register name from :data:`REGISTERS`, or an id (``0x03EC`` / ``1004``)."""
    text = str(name).strip()
    if text in REGISTERS:
        return REGISTERS[text]
    try:
        number = int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        raise ValueError(name) from None
    if not 0 <= number <= 0xFFFF:
        raise ValueError(name)
    for register in REGISTERS.values():
        if register.id == number:
            return register
    return Register(number, "?", f"register_{number:04x}")


def register_extras(values: dict[int, kmp.RegisterValue], wanted: list[Register]) -> dict[str, float]:
    """Register values → extras in the project's units (raw, unit-suffixed if a unit does not fit)."""
    extras: dict[str, float] = {}
    for register in wanted:
        value = values.get(register.id)
        if value is None:
            continue
        converted = kmp.convert(value.value, value.unit, register.quantity) if register.quantity != "?" else None
        if converted is not None:
            key, number = register.key, float(converted)
        else:
            slug = kmp.unit_slug(value.unit)
            key, number = (f"{register.key}_{slug}" if slug != "raw" else register.key), float(value.value)
        if math.isfinite(number):  # a KMP float can be far beyond float range (255 mantissa bytes)
            extras[key] = number
    return extras
