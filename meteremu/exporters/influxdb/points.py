"""Meter/Reading → InfluxDB points, and the daily energy summary (pure).

No I/O and no clock: the service passes the time and the counters in.

High rate, one set per new reading (timestamp = the reading's ``measured_at``):

* ``smart_meter`` per meter and phase (``phase`` = ``a``/``b``/``c``/``total``),
  tags ``meter``, ``phase``, ``meter_type`` (the source type); fields
  ``power_w`` (signed: + import, - export), ``import_wh``/``export_wh``
  (lifetime counters), ``daily_import_kwh``/``daily_export_kwh`` (since local
  midnight) and, per phase when the source measured the line (voltage above 0),
  envoy-logger's ``P`` [W], ``Q`` [var, derived √(S²-P²)], ``S`` [VA],
  ``I_rms`` [A], ``V_rms`` [V];
* ``inverter`` per ``inverter.<serial>`` extra: tags ``meter``, ``serial`` and
  the configured tags; field ``power_w``;
* ``smart_meter_circuit`` per ``circuit.<name>`` extra: tags ``meter``,
  ``circuit_name`` and the configured tags; fields ``power_w`` and
  ``percentage`` (of the meter's total active power, only while that is > 0);
* ``smart_meter_value`` for every other extra: tags ``meter``, ``name``;
  field ``value``.

Low rate, once per meter and local day: ``smart_meter_daily`` per phase and
``total``, tags ``meter``, ``phase``, ``meter_type``, ``interval=1d``; fields
``import_wh``, ``export_wh``, ``net_wh`` (import - export) and ``complete``
(the counters were taken at both midnights); timestamp = the local midnight
that *started* the day.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from meteremu.days import Counters, DayStart, counters_of, midnight
from meteremu.exporters.influxdb.lineprotocol import FieldValue, format_point
from meteremu.meter import Meter
from meteremu.reading import PHASE_NAMES, Reading

SMART_METER = "smart_meter"
INVERTER = "inverter"
CIRCUIT = "smart_meter_circuit"
VALUE = "smart_meter_value"
DAILY = "smart_meter_daily"
TOTAL = "total"


# Tags a configured extra label may not replace.
_RESERVED_TAGS = frozenset({"meter", "phase", "meter_type", "serial", "circuit_name", "name", "interval", "time"})



@dataclass(frozen=True)
class Point:
    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time: float

    def line(self, precision: str = "ms") -> str | None:
        return format_point(self.measurement, self.tags, self.fields, self.time, precision)


def _label_tags(labels: Mapping[str, Any] | None) -> dict[str, str]:
    """Configured tags for an extra, minus the ones the schema owns."""
    out: dict[str, str] = {}
    for key, value in (labels or {}).items():
        key = str(key)
        if key in _RESERVED_TAGS or key.startswith("_") or value is None:
            continue
        out[key] = str(value)
    return out


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def reading_points(meter: Meter, reading: Reading, day_start: Counters | None = None) -> list[Point]:
    """The high-rate points for one new reading of ``meter``."""
    t = reading.measured_at
    name = meter.name
    base = {"meter": name, "meter_type": meter.source_type}
    counters = counters_of(meter)
    points: list[Point] = []

    def energy_fields(imp: float, exp: float, start: tuple[float, float] | None) -> dict[str, FieldValue]:
        fields: dict[str, FieldValue] = {"import_wh": float(imp), "export_wh": float(exp)}
        if start is not None:
            fields["daily_import_kwh"] = max(0.0, imp - start[0]) / 1000.0
            fields["daily_export_kwh"] = max(0.0, exp - start[1]) / 1000.0
        return fields

    phases = reading.phases
    for i, phase in enumerate(phases[: len(PHASE_NAMES)]):
        fields: dict[str, FieldValue] = {"power_w": float(phase.act_power)}
        if i < len(counters):
            start = day_start[i] if day_start is not None and i < len(day_start) else None
            fields.update(energy_fields(*counters[i], start))
        if phase.voltage > 0:
            p, s = float(phase.act_power), float(phase.aprt_power)
            fields.update({
                "P": p,
                "Q": math.sqrt(max(0.0, s * s - p * p)),
                "S": s,
                "I_rms": float(phase.current),
                "V_rms": float(phase.voltage),
            })
        points.append(Point(SMART_METER, {**base, "phase": PHASE_NAMES[i]}, fields, t))
    if phases:
        total: dict[str, FieldValue] = {"power_w": float(reading.total_act_power)}
        if counters:
            start_total = None
            if day_start is not None:
                start_total = (sum(s[0] for s in day_start), sum(s[1] for s in day_start))
            total.update(energy_fields(sum(c[0] for c in counters), sum(c[1] for c in counters), start_total))
        points.append(Point(SMART_METER, {**base, "phase": TOTAL}, total, t))

    total_power = reading.total_act_power
    for key, value in reading.extras.items():
        if not _finite(value):
            continue
        kind, _, item = key.partition(".")
        labels = _label_tags(meter.extra_labels.get(key))
        if kind == "inverter" and item:
            points.append(Point(INVERTER, {**labels, "meter": name, "serial": item},
                                {"power_w": float(value)}, t))
        elif kind == "circuit" and item:
            circuit: dict[str, FieldValue] = {"power_w": float(value)}
            if phases and total_power > 0:
                circuit["percentage"] = float(value) / total_power * 100.0
            points.append(Point(CIRCUIT, {**labels, "meter": name, "circuit_name": item}, circuit, t))
        else:
            points.append(Point(VALUE, {**labels, "meter": name, "name": key}, {"value": float(value)}, t))
    return points


def daily_points(meter_name: str, source_type: str, start: DayStart, end: Counters, complete: bool,
                 tz: tzinfo | None) -> list[Point]:
    """The summary of ``start.day``: counters at its end minus those at its start."""
    t = midnight(start.day, tz)
    base = {"meter": meter_name, "meter_type": source_type, "interval": "1d"}
    points = []
    total_in = total_out = 0.0
    for i, ((imp0, exp0), (imp1, exp1)) in enumerate(zip(start.counters, end, strict=False)):
        imp, exp = max(0.0, imp1 - imp0), max(0.0, exp1 - exp0)
        total_in += imp
        total_out += exp
        phase = PHASE_NAMES[i] if i < len(PHASE_NAMES) else str(i)
        points.append(Point(DAILY, {**base, "phase": phase},
                            {"import_wh": imp, "export_wh": exp, "net_wh": imp - exp, "complete": complete}, t))
    if points:
        points.append(Point(DAILY, {**base, "phase": TOTAL},
                            {"import_wh": total_in, "export_wh": total_out, "net_wh": total_in - total_out,
                             "complete": complete}, t))
    return points


def lines(points: Sequence[Point], precision: str) -> list[str]:
    """Formatted lines, leaving out points with nothing representable."""
    out = []
    for point in points:
        line = point.line(precision)
        if line is not None:
            out.append(line)
    return out
