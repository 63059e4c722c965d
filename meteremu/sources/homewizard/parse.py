"""HomeWizard P1 API bodies → Reading: pure, no I/O (v1 ``/api/v1/data``, v2
``/api/measurement`` and the v2 WebSocket's ``measurement`` pushes).

Mapping (design.md §4): ``power_l1_w`` … are signed (+ import, − export) per
phase; without per-phase power the total goes on phase A. Voltages, currents
(absolute values: the device reports them signed), frequency. Lifetime
counters ``energy_import_kwh``/``energy_export_kwh`` (v1:
``total_power_import_kwh``…; tariff sums when the total is absent) go on
phase A, as for DSMR. Gas, water, heat (``external[]``, v1 ``total_gas_m3``),
tariff, 15-minute average, monthly peak and power-failure counts are extras.
Absent keys are "not available", never zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from meteremu.reading import PhaseReading, Reading

NOMINAL_VOLTAGE = 230.0
NOMINAL_FREQUENCY = 50.0
# Beyond these a value is a damaged body, not a measurement: it counts as absent
# (and can never overflow to inf when scaled or multiplied).
MAX_POWER_W = 1e9
MAX_VOLTAGE_V = 1e5
MAX_CURRENT_A = 1e5
MAX_ENERGY_KWH = 1e12
MIN_VOLTAGE_V = 1.0  # below this there is no usable voltage (nominal 230 V instead)


_V1 = {"power": "active_power_w", "phase_power": "active_power_l{n}_w",
       "voltage": "active_voltage_l{n}_v", "current": "active_current_l{n}_a",
       "freq": "active_frequency_hz", "import": "total_power_import_kwh",
       "import_t": "total_power_import_t{n}_kwh", "export": "total_power_export_kwh",
       "export_t": "total_power_export_t{n}_kwh", "tariff": "active_tariff",
       "average": "active_power_average_w", "peak": "montly_power_peak_w",  # sic, v1's spelling
       "failures": "any_power_fail_count", "long_failures": "long_power_fail_count",
       "version": "smr_version"}
_V2 = {"power": "power_w", "phase_power": "power_l{n}_w", "voltage": "voltage_l{n}_v",
       "current": "current_l{n}_a", "freq": "frequency_hz", "import": "energy_import_kwh",
       "import_t": "energy_import_t{n}_kwh", "export": "energy_export_kwh",
       "export_t": "energy_export_t{n}_kwh", "tariff": "tariff", "average": "average_power_15m_w",
       "peak": "monthly_power_peak_w", "failures": "any_power_fail_count",
       "long_failures": "long_power_fail_count", "version": "protocol_version"}

EXTERNAL_KINDS = {"gas_meter": "gas", "water_meter": "water", "warm_water_meter": "warm_water",
                  "heat_meter": "heat", "inlet_heat_meter": "inlet_heat"}
_HEAT_KWH = {"GJ": 1000 / 3.6, "MJ": 1 / 3.6, "kWh": 1.0, "MWh": 1000.0}


def _number(data: Mapping[str, Any], key: str, limit: float | None = None) -> float | None:
    """A finite number (within ``±limit``) at ``key``, else None: JSON allows integers
    far beyond float range (``1e400`` written out), and NaN/Infinity are accepted too."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    if not math.isfinite(value) or (limit is not None and abs(value) > limit):
        return None
    return value


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _phase(p: float, voltage: float | None, current: float | None, freq: float) -> PhaseReading:
    """Consistent phase values: a current that cannot carry ``p`` is derived instead."""
    v = voltage if voltage is not None and voltage >= MIN_VOLTAGE_V else NOMINAL_VOLTAGE
    i = abs(current) if current is not None else None
    if i is not None and i > 0 and v * i >= abs(p):
        s = v * i
        return PhaseReading(voltage=v, current=i, act_power=p, aprt_power=s, pf=p / s, freq=freq)
    return PhaseReading.from_power(p, voltage=v, pf=1.0, freq=freq)


def _text(data: Mapping[str, Any], key: str) -> str:
    """The string at ``key``, else ""."""
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_").lower() or "value"


@dataclass(frozen=True)
class Measurement:
    reading: Reading
    labels: dict[str, dict[str, str]]
    per_phase_power: bool
    smr_version: int | None
    meter_model: str | None
    devices: tuple[dict[str, Any], ...] = ()  # gas/water/heat meters, for /healthz


def parse_v1_time(value: Any, tz: Any) -> str | None:
    """v1's ``210606140010`` (YYMMDDhhmmss, device local time) → ISO-8601, or None."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or len(text) != 12 or not text.isdigit():
        return None
    try:
        moment = datetime.strptime(text, "%y%m%d%H%M%S")
    except ValueError:
        return None
    return (moment.replace(tzinfo=tz) if tz is not None else moment).isoformat()


def parse_local_time(text: Any, tz: Any) -> float | None:
    """``2024-06-28T14:12:34`` (device local time) → epoch seconds, or None."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=tz) if tz is not None else moment.astimezone()
        return moment.timestamp()
    except (ValueError, OverflowError, OSError):  # not a time, or beyond the platform's range
        return None


def parse_measurement(data: Mapping[str, Any], api: str, arrival: float, tz: Any = None,
                      timestamps: str = "meter") -> Measurement:
    """A v1 ``/api/v1/data`` or v2 ``/api/measurement`` body → Reading (ValueError if unusable)."""
    if not isinstance(data, Mapping):
        raise ValueError("the answer is not a JSON object")
    keys = _V1 if api == "v1" else _V2
    freq = _number(data, keys["freq"], 1e3) or NOMINAL_FREQUENCY
    powers = [_number(data, keys["phase_power"].format(n=n), MAX_POWER_W) for n in (1, 2, 3)]
    volts = [_number(data, keys["voltage"].format(n=n), MAX_VOLTAGE_V) for n in (1, 2, 3)]
    amps = [_number(data, keys["current"].format(n=n), MAX_CURRENT_A) for n in (1, 2, 3)]
    total = _number(data, keys["power"], MAX_POWER_W)
    phases: list[PhaseReading] = []
    per_phase = any(p is not None for p in powers)
    if per_phase:
        count = max(n + 1 for n in range(3) if powers[n] is not None or volts[n] is not None)
        for n in range(count):
            phases.append(_phase(powers[n] or 0.0, volts[n], amps[n], freq))
    elif total is not None:
        phases.append(_phase(total, volts[0], None, freq))
        for volt in volts[1:]:
            if volt is not None and volt >= MIN_VOLTAGE_V:
                phases.append(PhaseReading(volt, 0.0, 0.0, 0.0, 0.0, freq))

    extras: dict[str, float] = {}
    labels: dict[str, dict[str, str]] = {}
    devices: list[dict[str, Any]] = []
    sums = {}
    for direction in ("import", "export"):
        tariffs = [_number(data, keys[f"{direction}_t"].format(n=n), MAX_ENERGY_KWH) for n in (1, 2, 3, 4)]
        for n, value in enumerate(tariffs, 1):
            if value is not None:
                extras[f"energy_{direction}_t{n}_kwh"] = value
        value = _number(data, keys[direction], MAX_ENERGY_KWH)
        if value is None and any(t is not None for t in tariffs):
            value = sum(t for t in tariffs if t is not None)
        sums[direction] = value
    energy = None
    if sums["import"] is not None or sums["export"] is not None:
        energy = ((1000.0 * (sums["import"] or 0.0), 1000.0 * (sums["export"] or 0.0)),)
    for name, key in (("tariff", "tariff"), ("average", "average_demand_w"), ("peak", "month_peak_w"),
                      ("failures", "power_failures"), ("long_failures", "long_power_failures")):
        value = _number(data, keys[name])
        if value is not None:
            extras[key] = value
    if api == "v1" and _number(data, "total_gas_m3") is not None:
        extras["gas_m3"] = _number(data, "total_gas_m3")  # type: ignore[assignment]
        labels["gas_m3"] = {"kind": "gas"}
        if isinstance(data.get("gas_unique_id"), str):
            labels["gas_m3"]["unique_id"] = data["gas_unique_id"]
        devices.append({"key": "gas_m3", "type": "gas_meter", "value": extras["gas_m3"], "unit": "m3",
                        "at": parse_v1_time(data.get("gas_timestamp"), tz)})
    external = data.get("external")
    for item in external if isinstance(external, list) else []:
        if not isinstance(item, Mapping):
            continue
        value = _number(item, "value")
        unit = _text(item, "unit")
        kind = EXTERNAL_KINDS.get(str(item.get("type")), _slug(str(item.get("type") or "external")))
        if value is None:
            continue
        if kind in ("heat", "inlet_heat") and unit in _HEAT_KWH:
            key, value = f"{kind}_energy_kwh", _finite(value * _HEAT_KWH[unit])
            if value is None:
                continue
        else:
            key = f"{kind}_{_slug(unit)}"
        ident = _text(item, "unique_id")
        if key in extras:
            if labels.get(key, {}).get("unique_id") == ident and ident:
                continue  # v1 lists the gas meter twice (total_gas_m3 and external)
            key = f"{key}.{ident or len(extras)}"
        extras[key] = value
        labels[key] = {"kind": kind, **({"unique_id": ident} if ident else {})}
        stamp = item.get("timestamp")
        devices.append({"key": key, "type": item.get("type"), "value": item.get("value"), "unit": unit,
                        "at": parse_v1_time(stamp, tz) if api == "v1" else stamp})
    if not phases and energy is None and not extras:
        raise ValueError("no power, energy or meter value in the answer")
    measured = arrival
    if api == "v2" and timestamps == "meter":
        measured = parse_local_time(data.get("timestamp"), tz) or arrival
    version = _number(data, keys["version"])
    model = data.get("meter_model")
    return Measurement(
        reading=Reading(phases=tuple(phases), measured_at=measured, energy=energy, extras=extras),
        labels=labels, per_phase_power=per_phase,
        smr_version=int(version) if version is not None else None,
        meter_model=model if isinstance(model, str) else None, devices=tuple(devices),
    )
