"""ESPHome sensor entities and states → Readings. Pure: no aioesphomeapi, no reactor.

* :func:`match_entities` pairs each configured sensor with an entity the
  device listed (by ``object_id``, else by name; case and the spaces/underscore
  difference ignored only when nothing matches exactly) and fixes its unit:
  the config's, else the one the device declares. A missing sensor, two
  entities answering one name, or a unit that is not a unit of the quantity
  is a :class:`MatchError` naming the sensor (and what the device has).
* :class:`SensorStates` keeps the newest value of each configured quantity
  (several entities per counter: tariffs, summed), keyed by the entity's
  ``key`` as the states arrive. ESPHome sends ``NaN`` (``missing_state``)
  for a sensor that has no value: that value becomes unknown, never data;
  a value beyond its quantity's range (the shared
  :func:`meteremu.sources.jsonfields.range_problem`) is refused the same way, named.
* A Reading is built (:func:`meteremu.sources.values.reading_parts`, as for
  every source) once every power quantity is known and fresh.

Freshness is judged here too (:meth:`SensorStates.problem`): a power
quantity unknown or without a state for ``max_age`` makes the meter stale.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from meteremu.reading import Reading
from meteremu.sources.esphome.options import EsphomeSensor, EsphomeValues
from meteremu.sources.jsonfields import range_problem
from meteremu.sources.values import (
    DEFAULT_UNIT,
    ENERGY,
    KEY_KIND,
    REQUIRED_KEYS,
    next_measured_at,
    reading_parts,
    unit_factor,
)

_F32 = struct.Struct("<f")


def float32_decimal(value: float) -> float:
    """The decimal a device meant by a float32 state: the shortest that is the same float32.

    ESPHome's states are float32, so 12345.6 kWh arrives as 12345.599609375;
    read as its shortest float32 decimal it is 12345.6 again (a 0.4 Wh error
    less on a counter, and values that print as the device shows them).
    """
    if not math.isfinite(value) or value == 0:
        return value
    try:
        packed = _F32.pack(value)
    except OverflowError:
        return value
    for digits in range(6, 10):
        text = f"{value:.{digits}g}"
        candidate = float(text)
        if _F32.pack(candidate) == packed:
            return candidate
    return value


class MatchError(ValueError):
    """The configured sensors do not fit what the device lists."""


@dataclass(frozen=True)
class Entity:
    """What a ``ListEntitiesSensorResponse`` says of one sensor (aioesphomeapi's SensorInfo)."""

    key: int
    object_id: str
    name: str
    unit: str = ""


@dataclass(frozen=True)
class Binding:
    """One configured quantity bound to one of the device's entities."""

    quantity: str
    index: int
    entity: Entity
    factor: float
    unit: str | None

    @property
    def label(self) -> str:
        return self.entity.object_id or self.entity.name


def _fold(text: str) -> str:
    return "".join("_" if c in " -" else c for c in text.strip().lower())


def _find(entities: list[Entity], wanted: str) -> list[Entity]:
    for same in (lambda e: e.object_id == wanted, lambda e: e.name == wanted,
                 lambda e: _fold(e.object_id) == _fold(wanted) or _fold(e.name) == _fold(wanted)):
        found = [e for e in entities if same(e)]
        if found:
            return found
    return []


def _describe(entities: list[Entity], limit: int = 12) -> str:
    names = [f"{e.object_id or e.name}" + (f" ({e.unit})" if e.unit else "") for e in entities[:limit]]
    more = len(entities) - limit
    return ", ".join(names) + (f" and {more} more" if more > 0 else "") if names else "no sensors"


def _factor(quantity: str, item: EsphomeSensor, entity: Entity) -> tuple[float, str | None]:
    kind = KEY_KIND[quantity]
    unit: str | None = item.unit if item.unit is not None else (entity.unit.strip() or None)
    if unit is None:
        if kind == ENERGY:
            raise MatchError(f"{quantity}: sensor {entity.object_id or entity.name!r} declares no unit; "
                             "set unit: kWh (or Wh)")
        unit = DEFAULT_UNIT[kind]
    try:
        factor = float(unit_factor(kind, unit))
    except ValueError as err:
        where = "its configured unit" if item.unit is not None else "the device declares"
        raise MatchError(f"{quantity}: sensor {entity.object_id or entity.name!r}: {where} {unit!r}; "
                         f"expected {err}") from None
    return factor * item.scale * (-1.0 if item.invert else 1.0), unit


def match_entities(values: EsphomeValues, entities: Iterable[Entity]) -> list[Binding]:
    """Bind every configured quantity to an entity; :class:`MatchError` names every misfit."""
    listed = list(entities)
    bindings: list[Binding] = []
    problems: list[str] = []
    for quantity, index, item in values.items():
        found = _find(listed, item.sensor)
        if not found:
            problems.append(f"{quantity}: no sensor {item.sensor!r}")
            continue
        if len(found) > 1:
            problems.append(f"{quantity}: {len(found)} sensors answer to {item.sensor!r} "
                            f"({', '.join(e.object_id for e in found)}): name one by its object_id")
            continue
        try:
            factor, unit = _factor(quantity, item, found[0])
        except MatchError as err:
            problems.append(str(err))
            continue
        bindings.append(Binding(quantity, index, found[0], factor, unit))
    if problems:
        if any("no sensor" in p for p in problems):
            problems.append(f"the device has {_describe(listed)}")
        raise MatchError("; ".join(problems))
    return bindings


@dataclass
class Outcome:
    """What one state did: a new Reading, a refused value (a warning), or nothing yet."""

    reading: Reading | None = None
    refused: str | None = None


class SensorStates:
    """The newest value of each bound quantity, and the Readings they make (see the module docstring)."""

    def __init__(self, bindings: list[Binding], max_power: float, invert: bool, max_age: float) -> None:
        self.bindings = bindings
        self.by_key: dict[int, list[Binding]] = {}
        for b in bindings:
            self.by_key.setdefault(b.entity.key, []).append(b)
        self.keys = {b.quantity for b in bindings}
        self.max_power, self.invert, self.max_age = max_power, invert, max_age
        self.values: dict[tuple[str, int], float] = {}
        self.arrived: dict[tuple[str, int], float] = {}
        self.unknown: dict[tuple[str, int], str] = {}
        self._last: float | None = None

    def state(self, key: int, value: float, missing: bool, now: float, wall_now: float) -> Outcome:
        """A ``SensorStateResponse`` for entity ``key`` arrived at ``now`` (monotonic) / ``wall_now``."""
        bound = self.by_key.get(key)
        if not bound:
            return Outcome()  # another entity of the device
        outcome = Outcome()
        for b in bound:
            slot = (b.quantity, b.index)
            self.arrived[slot] = now
            problem = self._refusal(b, value, missing)
            if problem is not None:
                self.values.pop(slot, None)
                self.unknown[slot] = problem
                outcome.refused = problem
                continue
            self.unknown.pop(slot, None)
            self.values[slot] = float32_decimal(value) * b.factor  # checked by _refusal
        if self.ready():
            outcome.reading = self.reading(wall_now)
        return outcome

    def _refusal(self, b: Binding, value: float, missing: bool) -> str | None:
        if missing or not math.isfinite(value):
            return f"sensor {b.label} ({b.quantity}) has no value (the device sends NaN)"
        converted = float32_decimal(value) * b.factor
        shown = f"sensor {b.label} ({b.quantity}) = {value:g}{' ' + b.unit if b.unit else ''}"
        if not math.isfinite(converted):
            return f"{shown} is out of range"
        problem = range_problem(KEY_KIND[b.quantity], converted, self.max_power)
        return f"{shown} is out of range: {converted:g} {problem}" if problem else None

    def ready(self) -> bool:
        """Every bound power quantity has a value (the counters may still be on their way)."""
        return all((b.quantity, b.index) in self.values for b in self.bindings if b.quantity in REQUIRED_KEYS)

    def pending(self) -> bool:
        """A power quantity has had no state at all yet on this connection."""
        return any((b.quantity, b.index) not in self.arrived for b in self.bindings if b.quantity in REQUIRED_KEYS)

    def problem(self, now: float) -> str | None:
        """Why the meter cannot be fresh at ``now`` (every power sensor without a value, never
        heard of, or silent for ``max_age``), or None."""
        found: list[str] = []
        for b in self.bindings:
            if b.quantity not in REQUIRED_KEYS:
                continue
            slot = (b.quantity, b.index)
            arrived = self.arrived.get(slot)
            if slot in self.unknown:
                found.append(self.unknown[slot])
            elif arrived is None:
                found.append(f"waiting for a state of sensor {b.label} ({b.quantity})")
            elif now - arrived > self.max_age:
                found.append(f"no state of sensor {b.label} ({b.quantity}) for {now - arrived:.1f} s "
                             f"(max_age {self.max_age:g} s)")
        return "; ".join(found) or None

    def value(self, quantity: str) -> float | None:
        found = [v for (q, _), v in self.values.items() if q == quantity]
        if quantity in ("energy_import", "energy_export"):
            wanted = sum(1 for b in self.bindings if b.quantity == quantity)
            if len(found) < wanted:
                return None  # every tariff, or none: a partial sum would look like a drop
        return sum(found) if found else None

    def reading(self, wall_now: float) -> Reading:
        phases, energy = reading_parts(self.keys, self.value, self.invert)
        measured_at = next_measured_at([wall_now], self._last)
        self._last = measured_at
        return Reading(phases=phases, measured_at=measured_at, energy=energy)

    def clear(self) -> None:
        """A new connection: the old values are not the device's current ones."""
        self.values.clear()
        self.arrived.clear()
        self.unknown.clear()
