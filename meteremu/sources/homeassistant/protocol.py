"""Home Assistant, the pure part: messages, compressed state diffs, units,
entity mapping, readings and auto-discovery (specs/sources-sinks.md §1).

No reactor, no sockets: ``client.py`` moves frames between the network and
the :class:`Tracker` here, which keeps a local copy of every watched entity
(merging the ``a``/``c``/``r`` events of ``subscribe_entities`` and REST
state objects) and turns changes into :class:`~meteremu.reading.Reading`\\ s.

Rules (design.md §4, spec §1.1/§1.3):

* ``state`` is a string; ``unknown`` means *no new sample* (the last value is
  kept), ``unavailable`` (or the entity being removed) of a power entity
  means the source is *down*; an auxiliary entity (voltage, current, pf,
  frequency, energy, circuit) that is unavailable is just left out.
* The unit is read from the same message, every time: users switch a sensor's
  display unit (W ↔ kW) and HA then changes ``state`` and the unit together.
  Numbers are parsed with ``Decimal`` and converted exactly (``Fraction``), so
  ``0.0036 GJ`` is exactly ``1000 Wh``. An unknown or missing unit rejects the
  sample (warned once per entity and reason).
* A *new sample* is a state write (``lc`` advanced, which HA also does for
  ``force_update`` sensors) or a changed value; an attribute-only update
  (``lu`` alone, e.g. a new ``friendly_name``) is not.
* The Reading's ``measured_at`` is the newest ``last_updated`` of the entities
  that brought a new sample. If that is not later than the previous Reading
  (two entities written in the same instant, arriving as two events), it is
  nudged 1 ms past it so the Meter accepts a genuinely new value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from typing import Any

from meteremu.reading import Reading
from meteremu.sources.values import (
    CURRENT,
    ENERGY,
    FREQUENCY,
    KEY_KIND,
    PHASES,
    POWER,
    POWER_FACTOR,  # noqa: F401 (re-exported: a unit kind, like the others)
    REQUIRED_KEYS,
    UNITS,
    VOLTAGE,
    Smoother,
    next_measured_at,
    out_of_range,
    reading_parts,
)

STATE_UNKNOWN = "unknown"
STATE_UNAVAILABLE = "unavailable"

# -- messages -------------------------------------------------------------------


def dumps(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def auth_message(token: str) -> dict[str, Any]:
    """The only message without an ``id``. Never log it."""
    return {"type": "auth", "access_token": token}


def command(msg_id: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"id": msg_id, "type": kind, **fields}


def parse_frame(payload: bytes | str) -> list[dict[str, Any]]:
    """One WebSocket text frame → its messages.

    With ``coalesce_messages`` the server may send a JSON array of messages.
    Raises ``ValueError`` for anything that is not a message or a list of them
    (also for JSON nested too deeply for the decoder).
    """
    try:
        data = json.loads(payload)
    except RecursionError:
        raise ValueError("a frame nested too deeply") from None
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(item, dict) for item in items):
        raise ValueError("a frame must be a JSON object or an array of objects")
    return items


class MessageIds:
    """Command ids: strictly increasing within one connection (core: ``id_reuse``)."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last += 1
        return self.last


# -- units ------------------------------------------------------------------------


class SampleError(ValueError):
    """A state that is not a usable number in a known unit (no sample)."""


def parse_number(state: Any) -> Decimal:
    """A state string → Decimal; raises SampleError for unknown/unavailable/garbage."""
    if not isinstance(state, str) or state.strip() in ("", STATE_UNKNOWN, STATE_UNAVAILABLE):
        raise SampleError(f"state {state!r} is not a number")
    try:
        number = Decimal(state.strip())
    except InvalidOperation:
        raise SampleError(f"state {state!r} is not a number") from None
    if not number.is_finite():
        raise SampleError(f"state {state!r} is not a finite number")
    if out_of_range(number):
        raise SampleError(f"state {state!r} is out of range")
    return number


def convert(state: Any, unit: Any, kind: str) -> float:
    """The state in the canonical unit of ``kind`` (W, Wh, V, A, Hz, pf)."""
    factors = UNITS[kind]
    if not (unit is None or isinstance(unit, str)) or unit not in factors:
        if unit is None or unit == "":
            raise SampleError(f"no unit_of_measurement on a {kind} sensor")
        raise SampleError(f"unknown {kind} unit {unit!r}")
    try:
        value = float(Fraction(parse_number(state)) * factors[unit])
    except OverflowError:
        raise SampleError(f"state {state!r} {unit} is beyond float range") from None
    if not math.isfinite(value):
        raise SampleError(f"state {state!r} is not a finite number")
    return value


def parse_time(value: Any) -> float | None:
    """ISO-8601 (REST) or epoch seconds (compressed states) → epoch seconds.

    Rounded to the microsecond, core's resolution, so that the same instant
    read from REST (ISO) and from a compressed state (float) compares equal.
    Anything unusable (beyond float range, non-finite, not a time) is None.
    """
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            result = round(float(value), 6)
        elif isinstance(value, str):
            result = round(datetime.fromisoformat(value).timestamp(), 6)
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    return result if math.isfinite(result) else None


# -- compressed state -------------------------------------------------------------


def compressed_from_rest(obj: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A REST / ``get_states`` state object → ``(entity_id, compressed state)``."""
    entity_id = obj.get("entity_id")
    if not isinstance(entity_id, str):
        raise ValueError("state object without entity_id")
    attributes = obj.get("attributes")
    state: dict[str, Any] = {"s": obj.get("state"),
                             "a": dict(attributes) if isinstance(attributes, Mapping) else {}}
    changed = parse_time(obj.get("last_changed"))
    updated = parse_time(obj.get("last_updated"))
    state["lc"] = changed if changed is not None else updated
    if updated is not None and updated != state["lc"]:
        state["lu"] = updated
    context = obj.get("context")
    if isinstance(context, dict):
        state["c"] = context.get("id") if context.get("parent_id") is None and \
            context.get("user_id") is None else dict(context)
    return entity_id, state


def last_updated(state: Mapping[str, Any]) -> float | None:
    """``lu`` if present, else ``lc`` (core omits ``lu`` when it equals ``lc``)."""
    return parse_time(state.get("lu", state.get("lc")))


def unit_of(state: Mapping[str, Any]) -> Any:
    attributes = state.get("a")
    return attributes.get("unit_of_measurement") if isinstance(attributes, dict) else None


def _malformed(malformed: list[str] | None, what: str) -> None:
    if malformed is not None:
        malformed.append(what)


def merge_diff(state: dict[str, Any], diff: Mapping[str, Any], malformed: list[str] | None = None) -> None:
    """Apply one ``c`` entry (``{"+": additions, "-": removals}``) in place.

    Parts of the wrong JSON type are skipped (and named in ``malformed``).
    """
    plus = diff.get("+") or {}
    if not isinstance(plus, Mapping):
        _malformed(malformed, "'+' of a diff is not an object")
        plus = {}
    if "s" in plus:
        state["s"] = plus["s"]
    if "lc" in plus:
        state["lc"] = parse_time(plus["lc"])
        if "lu" not in plus:
            state.pop("lu", None)  # a state write: last_updated == last_changed again
    if "lu" in plus:
        state["lu"] = parse_time(plus["lu"])
    if "c" in plus:
        context = plus["c"]
        if isinstance(context, dict):
            current = state.get("c")
            merged = dict(current) if isinstance(current, dict) else {"id": current}
            merged.update(context)
            state["c"] = merged
        else:
            state["c"] = context
    attributes = state.get("a")
    if not isinstance(attributes, dict):
        attributes = state["a"] = {}
    if isinstance(plus.get("a"), Mapping):
        attributes.update(plus["a"])
    elif "a" in plus:
        _malformed(malformed, "attributes ('+'.a) of a diff are not an object")
    minus = diff.get("-") or {}
    if not isinstance(minus, Mapping):
        _malformed(malformed, "'-' of a diff is not an object")
        return
    removals = minus.get("a") or ()
    if not isinstance(removals, list | tuple):
        _malformed(malformed, "removed attributes ('-'.a) of a diff are not a list")
        return
    for name in removals:
        if isinstance(name, str):
            attributes.pop(name, None)


def apply_event(states: dict[str, dict[str, Any]], event: Mapping[str, Any],
                malformed: list[str] | None = None) -> tuple[set[str], set[str]]:
    """Apply a ``subscribe_entities`` event; return ``(updated, removed)`` ids.

    An event may carry ``a``, ``c`` and ``r`` together (core batches them, at
    most one update per entity), so the order of application does not matter.
    A diff for an entity we hold no state for is ignored. Parts of the wrong
    JSON type are skipped; a description of each is added to ``malformed``.
    """
    updated: set[str] = set()
    removed: set[str] = set()
    additions = event.get("a") or {}
    if not isinstance(additions, Mapping):
        _malformed(malformed, "'a' of an event is not an object")
        additions = {}
    for entity_id, state in additions.items():
        if not isinstance(state, Mapping):
            _malformed(malformed, f"state of {entity_id} in 'a' is not an object")
            continue
        attributes = state.get("a") or {}
        if not isinstance(attributes, Mapping):
            # A whole new state replaces the held one: keep the held one
            # (its unit) rather than a state we cannot read.
            _malformed(malformed, f"attributes of {entity_id} in 'a' are not an object")
            continue
        held = states[entity_id] = {**state, "a": dict(attributes)}
        for key in ("lc", "lu"):
            if key in held:
                held[key] = parse_time(held[key])
        updated.add(entity_id)
    changes = event.get("c") or {}
    if not isinstance(changes, Mapping):
        _malformed(malformed, "'c' of an event is not an object")
        changes = {}
    for entity_id, diff in changes.items():
        current = states.get(entity_id)
        if not isinstance(diff, Mapping):
            _malformed(malformed, f"diff of {entity_id} in 'c' is not an object")
        elif current is not None:
            merge_diff(current, diff, malformed)
            updated.add(entity_id)
    removals = event.get("r") or ()
    if not isinstance(removals, list | tuple):
        _malformed(malformed, "'r' of an event is not a list")
        removals = ()
    for entity_id in removals:
        if isinstance(entity_id, str) and states.pop(entity_id, None) is not None:
            removed.add(entity_id)
    # Core never adds and removes one entity in one event; if a server does,
    # the removal stands (the state is gone) and nothing reads it as updated.
    return updated - removed, removed


# -- entity mapping ---------------------------------------------------------------

@dataclass(frozen=True)
class EntityMapping:
    """The chosen mapping: quantity key → entity id(s), circuits, sign."""

    entities: Mapping[str, str | tuple[str, ...]]
    circuits: Mapping[str, str] = field(default_factory=dict)
    invert: bool = False
    origin: str = "configured"

    def entity_ids(self) -> list[str]:
        """Every entity to watch, in a stable order, without duplicates."""
        ids: list[str] = []
        for value in (*self.entities.values(), *self.circuits.values()):
            for entity in (value,) if isinstance(value, str) else value:
                if entity not in ids:
                    ids.append(entity)
        return ids

    def roles(self) -> dict[str, tuple[str, bool]]:
        """``entity_id → (kind, required)``; power entities are required."""
        roles: dict[str, tuple[str, bool]] = {}
        for key, value in self.entities.items():
            for entity in (value,) if isinstance(value, str) else value:
                kind, required = roles.get(entity, (KEY_KIND[key], False))
                roles[entity] = (kind, required or key in REQUIRED_KEYS)
        for entity in self.circuits.values():
            roles.setdefault(entity, (POWER, False))
        return roles

    def has_power(self) -> bool:
        return any(k in self.entities for k in ("power", "a_power", "b_power", "c_power"))

    def describe(self) -> dict[str, Any]:
        """JSON-able, for the log and ``meter.details``."""
        return {"origin": self.origin, "invert": self.invert,
                "entities": {k: list(v) if isinstance(v, tuple) else v for k, v in self.entities.items()},
                "circuits": dict(self.circuits)}


# -- the tracker ------------------------------------------------------------------


@dataclass
class Outcome:
    """What one batch of changes means for the Meter."""

    reading: Reading | None = None
    down: str | None = None
    waiting: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)


class Tracker:
    """Local copies of the watched entities → Readings. Pure and synchronous."""

    def __init__(self, mapping: EntityMapping, smoother: Smoother | None = None) -> None:
        self.mapping = mapping
        self.smoother = smoother or Smoother()
        self.states: dict[str, dict[str, Any]] = {}
        self.values: dict[str, float] = {}
        self._roles = mapping.roles()
        self._consumed: dict[str, Any] = {}  # entity → lc of the sample last taken
        self._unavailable: set[str] = set()
        self._warned: set[tuple[str, str]] = set()
        self.last_measured_at: float | None = None
        self.malformed = 0  # parts of events skipped for having the wrong JSON type

    @property
    def watched(self) -> list[str]:
        return self.mapping.entity_ids()

    @property
    def ready(self) -> bool:
        """Every power entity has a value and none is unavailable: the meter can be served."""
        return not self._unavailable and all(
            entity in self.values for entity, (_, required) in self._roles.items() if required)

    # -- input ---------------------------------------------------------------
    def apply_event(self, event: Mapping[str, Any]) -> Outcome:
        malformed: list[str] = []
        updated, removed = apply_event(self.states, event, malformed)
        outcome = self.evaluate(updated, removed)
        if malformed:
            self.malformed += len(malformed)
            for what in malformed:
                if ("event", what) not in self._warned:
                    self._warned.add(("event", what))
                    outcome.warnings.append(f"malformed subscribe_entities event: {what}; part ignored")
        return outcome

    def apply_rest(self, objects: Iterable[Mapping[str, Any]]) -> Outcome:
        """Merge REST / ``get_states`` objects; an older one never overwrites a newer one."""
        updated: set[str] = set()
        for obj in objects:
            if not isinstance(obj, Mapping):
                continue
            try:
                entity_id, state = compressed_from_rest(obj)
            except ValueError:
                continue
            if entity_id not in self._roles:
                continue
            held = self.states.get(entity_id)
            if held is not None and (last_updated(held) or 0) > (last_updated(state) or 0):
                continue
            self.states[entity_id] = state
            updated.add(entity_id)
        return self.evaluate(updated, set())

    def not_found(self, entity_id: str) -> Outcome:
        """REST answered 404: the entity does not exist (yet)."""
        outcome = Outcome(not_found=[entity_id])
        kind, required = self._roles.get(entity_id, (POWER, False))
        if required:
            outcome.down = f"{entity_id} does not exist in Home Assistant"
        return outcome

    # -- evaluation ------------------------------------------------------------
    def _warn(self, outcome: Outcome, entity_id: str, why: str) -> None:
        if (entity_id, why) not in self._warned:
            self._warned.add((entity_id, why))
            outcome.warnings.append(f"{entity_id}: {why}; sample ignored")

    def evaluate(self, updated: set[str], removed: set[str]) -> Outcome:
        outcome = Outcome()
        stamps: list[float] = []
        for entity_id in sorted(removed):
            if entity_id not in self._roles:
                continue
            self.values.pop(entity_id, None)
            self._consumed.pop(entity_id, None)
            self.smoother.reset(entity_id)
            if self._roles[entity_id][1]:
                self._unavailable.add(entity_id)
                outcome.down = f"{entity_id} was removed from Home Assistant"
            stamps.append(self.last_measured_at or 0.0)
        for entity_id in sorted(updated):
            if entity_id not in self._roles:
                continue
            kind, required = self._roles[entity_id]
            state = self.states[entity_id]
            text = state.get("s")
            if text == STATE_UNAVAILABLE:
                self._consumed[entity_id] = state.get("lc")
                if required:
                    self._unavailable.add(entity_id)
                    outcome.down = f"{entity_id} is unavailable"
                elif self.values.pop(entity_id, None) is not None:
                    stamps.append(last_updated(state) or 0.0)  # drop it from the served values
                continue
            if text == STATE_UNKNOWN:
                continue  # no sample: keep serving the last value
            try:
                value = convert(text, unit_of(state), kind)
            except SampleError as err:
                self._warn(outcome, entity_id, str(err))
                continue
            unchanged = self._consumed.get(entity_id) == state.get("lc") and entity_id in self.values
            self._consumed[entity_id] = state.get("lc")
            self._unavailable.discard(entity_id)
            if kind == POWER:
                if unchanged:
                    continue
                value = self.smoother(entity_id, value)
            elif unchanged and self.values.get(entity_id) == value:
                continue
            self.values[entity_id] = value
            stamps.append(last_updated(state) or 0.0)
        if outcome.down is not None or not stamps:
            return outcome
        down = sorted(self._unavailable)
        if down:
            outcome.down = f"{down[0]} is unavailable"
            return outcome
        outcome.waiting = [e for e, (_, required) in self._roles.items()
                           if required and e not in self.values]
        if outcome.waiting:
            return outcome
        measured_at = self.last_measured_at = next_measured_at(stamps, self.last_measured_at)
        outcome.reading = self.reading(measured_at)
        return outcome

    # -- building the reading ------------------------------------------------------
    def _value(self, key: str) -> float | None:
        entity = self.mapping.entities.get(key)
        if entity is None:
            return None
        if isinstance(entity, tuple):
            parts = [self.values.get(e) for e in entity]
            return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)
        return self.values.get(entity)

    def reading(self, measured_at: float) -> Reading:
        phases, energy = reading_parts(self.mapping.entities, self._value, self.mapping.invert)
        return Reading(phases=phases, measured_at=measured_at, energy=energy,
                       extras=self.circuit_extras(sum(p.act_power for p in phases)))

    def circuit_extras(self, total: float) -> dict[str, float]:
        extras: dict[str, float] = {}
        for name, entity in sorted(self.mapping.circuits.items()):
            value = self.values.get(entity)
            if value is None:
                continue
            # The extras convention of meter.py: "<kind>.<name>" (InfluxDB
            # writes these as smart_meter_circuit points, MQTT as circuit_<name>_power).
            extras[f"circuit.{name}"] = value
            if total > 0:
                extras[f"circuit_share.{name}"] = value / total
        return extras


# -- auto-discovery (spec §1.4) ------------------------------------------------------------

GRID_WORDS = ("grid", "net", "p1", "dsmr", "smart_meter", "smartmeter", "electricity_meter",
              "netz", "hausanschluss", "stroomnet", "utility", "mains")
IMPORT_WORDS = ("consumption", "import", "usage", "delivered", "from_grid", "verbruik", "bezug")
EXPORT_WORDS = ("production", "export", "returned", "return", "to_grid", "feed_in", "feedin",
                "teruglever", "einspeisung")
EXCLUDE_WORDS = ("cost", "price", "today", "daily", "monthly", "yearly", "forecast", "average",
                 "peak", "max", "min", "yesterday", "week", "tariff_rate", "compensation")
TARIFF = re.compile(r"(tarif|tariff|_t[12]\b|_t[12]_|_low|_high|_normal|_offpeak)")
PHASE_PATTERNS = tuple(
    re.compile(rf"(?:^|[_.])(?:l{n}|phase_?{n}|phase_?{x}|channel_?{x}|{x}_phase)(?=$|[_.])")
    for n, x in ((1, "a"), (2, "b"), (3, "c")))
KNOWN_NET_POWER = ("sensor.p1_meter_power", "sensor.p1_meter_active_power", "sensor.grid_power",
                   "sensor.net_power", "sensor.power_grid", "sensor.smart_meter_power")
KNOWN_IMPORT_POWER = ("sensor.electricity_meter_power_consumption", "sensor.power_consumption")
KNOWN_EXPORT_POWER = ("sensor.electricity_meter_power_production", "sensor.power_production")
NOT_A_LOAD = ("solar", "pv", "inverter", "battery", "generation", "yield")
MAX_CIRCUITS = 16


def _attributes(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    attributes = obj.get("attributes")
    return attributes if isinstance(attributes, Mapping) else {}


def _text(obj: Mapping[str, Any]) -> str:
    name = _attributes(obj).get("friendly_name")
    name = name if isinstance(name, str) else ""
    entity_id = obj.get("entity_id")
    text = f"{entity_id if isinstance(entity_id, str) else ''} {name}".lower()
    return re.sub(r"[\s\-]+", "_", text)


@lru_cache(maxsize=32)
def _words(words: tuple[str, ...]) -> re.Pattern[str]:
    """Whole words of an entity id / name: ``net`` must not match ``cabinet``."""
    return re.compile(r"(?:^|[_.])(?:" + "|".join(map(re.escape, words)) + r")(?=$|[_.])")


def _has(text: str, words: tuple[str, ...]) -> bool:
    return _words(words).search(text) is not None


def _direction(text: str) -> str:
    if _has(text, EXPORT_WORDS):
        return "export"
    if _has(text, IMPORT_WORDS):
        return "import"
    return "net"


def _phase(text: str) -> int | None:
    hits = [i for i, pattern in enumerate(PHASE_PATTERNS) if pattern.search(text)]
    return hits[0] if len(hits) == 1 else None


def _is_entity(value: Any) -> bool:
    """A statistic id that is an entity id (external statistics contain ':')."""
    return isinstance(value, str) and ":" not in value and "." in value


def _list(value: Any) -> list[Any]:
    """A JSON array as a list; anything else (a wrong type in prefs) as empty."""
    return value if isinstance(value, list) else []


def mapping_from_prefs(prefs: Mapping[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """Energy dashboard preferences → ``(entities, invert)``; both prefs shapes.

    Legacy: one grid source with ``flow_from``/``flow_to``/``power`` lists.
    Current: one grid source per connection with ``stat_energy_from``/
    ``stat_energy_to`` and ``stat_rate`` or ``power_config`` (which wins: it
    names the user's own sensors, ``stat_rate`` may be a generated helper).
    Several import or export meters (tariffs) are summed.
    """
    entities: dict[str, Any] = {}
    invert = False
    if not isinstance(prefs, Mapping):
        return entities, invert
    imports: list[Any] = []
    exports: list[Any] = []
    powers: list[Mapping[str, Any]] = []
    for source in _list(prefs.get("energy_sources")):
        if not isinstance(source, Mapping) or source.get("type") != "grid":
            continue
        for flow in _list(source.get("flow_from")):
            if isinstance(flow, Mapping):
                imports.append(flow.get("stat_energy_from"))
        for flow in _list(source.get("flow_to")):
            if isinstance(flow, Mapping):
                exports.append(flow.get("stat_energy_to"))
        powers.extend(p for p in _list(source.get("power")) if isinstance(p, Mapping))
        imports.append(source.get("stat_energy_from"))
        exports.append(source.get("stat_energy_to"))
        powers.append(source)
    imports = [e for e in imports if _is_entity(e)]
    exports = [e for e in exports if _is_entity(e)]
    if imports:
        entities["energy_import"] = imports[0] if len(imports) == 1 else tuple(imports)
    if exports:
        entities["energy_export"] = exports[0] if len(exports) == 1 else tuple(exports)
    for power in powers:
        config = power.get("power_config")
        if isinstance(config, Mapping):
            if _is_entity(config.get("stat_rate_inverted")):
                entities["power"], invert = config["stat_rate_inverted"], True
                break
            if _is_entity(config.get("stat_rate_from")) and _is_entity(config.get("stat_rate_to")):
                entities["power"] = config["stat_rate_from"]
                entities["power_export"] = config["stat_rate_to"]
                break
            if _is_entity(config.get("stat_rate")):
                entities["power"] = config["stat_rate"]
                break
        if _is_entity(power.get("stat_rate")):
            entities["power"] = power["stat_rate"]
            break
    return entities, invert


def circuits_from_prefs(prefs: Mapping[str, Any] | None) -> dict[str, str]:
    """``device_consumption[].stat_rate`` (individual devices' power sensors)."""
    circuits: dict[str, str] = {}
    if not isinstance(prefs, Mapping):
        return circuits
    for device in _list(prefs.get("device_consumption")):
        if isinstance(device, Mapping) and _is_entity(device.get("stat_rate")):
            circuits[circuit_name(device["stat_rate"], device.get("name"))] = device["stat_rate"]
    return circuits


def circuit_name(entity_id: str, name: Any = None) -> str:
    base = name if isinstance(name, str) and name.strip() else entity_id.split(".", 1)[-1]
    base = re.sub(r"[^a-z0-9]+", "_", base.lower()).strip("_")
    base = re.sub(r"^power_|_power$", "", base) or base
    return base or "circuit"


def _scalar(value: Any) -> bool:
    return not isinstance(value, list | dict)


def _candidates(states: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    found = []
    for obj in states:
        if not isinstance(obj, Mapping):
            continue
        entity_id = obj.get("entity_id")
        if not isinstance(entity_id, str) or not entity_id.startswith("sensor."):
            continue
        attributes = _attributes(obj)
        unit = attributes.get("unit_of_measurement")
        device_class = attributes.get("device_class")
        state_class = attributes.get("state_class")
        if not all(_scalar(v) for v in (unit, device_class, state_class)):
            continue  # a list or object where HA writes a string: not a sensor we can use
        if kind == POWER:
            ok = unit in UNITS[POWER] and device_class in (None, "power") and \
                state_class in (None, "measurement")
        elif kind == ENERGY:
            ok = unit in UNITS[ENERGY] and device_class in (None, "energy") and \
                state_class in ("total", "total_increasing")
        else:
            ok = unit in UNITS[kind] and device_class in (None, kind)
        if ok and not _has(_text(obj), EXCLUDE_WORDS):
            found.append(obj)
    return found


def mapping_from_states(states: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Attribute filter plus name heuristics over ``get_states`` (spec §1.4 2-3)."""
    entities: dict[str, Any] = {}
    states = [obj for obj in states if isinstance(obj, Mapping) and isinstance(obj.get("entity_id"), str)]
    by_id = {obj["entity_id"]: obj for obj in states}
    # Well-known ids first.
    for entity in KNOWN_NET_POWER:
        if entity in by_id and _candidates([by_id[entity]], POWER):
            entities["power"] = entity
            break
    else:
        for entity in KNOWN_IMPORT_POWER:
            if entity in by_id and _candidates([by_id[entity]], POWER):
                entities["power"] = entity
                for export in KNOWN_EXPORT_POWER:
                    if export in by_id and _candidates([by_id[export]], POWER):
                        entities["power_export"] = export
                        break
                break
    grid_power = [o for o in _candidates(states, POWER) if _has(_text(o), GRID_WORDS)]
    table: dict[tuple[int | None, str], str] = {}
    for obj in sorted(grid_power, key=lambda o: o["entity_id"]):
        text = _text(obj)
        table.setdefault((_phase(text), _direction(text)), obj["entity_id"])
    per_phase = {}
    for index, phase in enumerate(PHASES):
        if (index, "net") in table:
            per_phase[f"{phase}_power"] = table[(index, "net")]
        elif (index, "import") in table:
            per_phase[f"{phase}_power"] = table[(index, "import")]
            if (index, "export") in table:
                per_phase[f"{phase}_power_export"] = table[(index, "export")]
    if all(f"{p}_power" in per_phase for p in PHASES):
        entities.pop("power", None)
        entities.pop("power_export", None)
        entities.update(per_phase)
    elif "power" not in entities:
        if (None, "net") in table:
            entities["power"] = table[(None, "net")]
        elif (None, "import") in table:
            entities["power"] = table[(None, "import")]
            if (None, "export") in table:
                entities["power_export"] = table[(None, "export")]
    for kind, suffix in ((VOLTAGE, "voltage"), (CURRENT, "current")):
        for obj in sorted(_candidates(states, kind), key=lambda o: o["entity_id"]):
            text = _text(obj)
            if not _has(text, GRID_WORDS):
                continue
            phase_index = _phase(text)
            entities.setdefault(f"{PHASES[phase_index if phase_index is not None else 0]}_{suffix}", obj["entity_id"])
    for obj in sorted(_candidates(states, FREQUENCY), key=lambda o: o["entity_id"]):
        if _has(_text(obj), GRID_WORDS):
            entities.setdefault("frequency", obj["entity_id"])
    imports: list[str] = []
    exports: list[str] = []
    for obj in sorted(_candidates(states, ENERGY), key=lambda o: o["entity_id"]):
        text = _text(obj)
        if not _has(text, GRID_WORDS) or _phase(text) is not None:
            continue
        direction = _direction(text)
        if direction == "import":
            imports.append(obj["entity_id"])
        elif direction == "export":
            exports.append(obj["entity_id"])
    for key, found in (("energy_import", imports), ("energy_export", exports)):
        plain = [e for e in found if not TARIFF.search(e)]
        if plain:
            entities[key] = plain[0]
        elif found:
            entities[key] = found[0] if len(found) == 1 else tuple(found)
    return entities


def circuits_from_states(states: list[Mapping[str, Any]], used: Iterable[str]) -> dict[str, str]:
    """``sensor.power_*`` and device_class power sensors that are not the grid's."""
    taken = set(used)
    circuits: dict[str, str] = {}
    for obj in sorted(_candidates(states, POWER), key=lambda o: o["entity_id"]):
        entity_id = obj["entity_id"]
        text = _text(obj)
        attributes = _attributes(obj)
        if entity_id in taken or _has(text, GRID_WORDS) or _has(text, EXPORT_WORDS) \
                or _has(text, NOT_A_LOAD):
            continue
        if not (entity_id.startswith("sensor.power_") or attributes.get("device_class") == "power"):
            continue
        name = circuit_name(entity_id)
        if name not in circuits:
            circuits[name] = entity_id
        if len(circuits) >= MAX_CIRCUITS:
            break
    return circuits


def discover(prefs: Mapping[str, Any] | None, states: list[Mapping[str, Any]],
             want_circuits: bool = True) -> EntityMapping | None:
    """Energy prefs first, then heuristics for what the prefs did not name.

    Returns None when no power entity can be found.
    """
    from_prefs, invert = mapping_from_prefs(prefs)
    guessed = mapping_from_states(states)
    entities = dict(from_prefs)
    has_power = any(k in entities for k in ("power", "a_power"))
    for key, value in guessed.items():
        if key.endswith("power") or key.endswith("power_export"):
            if has_power:
                continue
        entities.setdefault(key, value)
    if not any(k in entities for k in ("power", "a_power")):
        return None
    power_from_prefs = "power" in from_prefs
    origin = "energy_prefs" if power_from_prefs else "heuristics"
    if from_prefs and not power_from_prefs:
        origin = "energy_prefs+heuristics"
    circuits: dict[str, str] = {}
    if want_circuits:
        circuits = circuits_from_prefs(prefs)
        used = [e for v in entities.values() for e in ((v,) if isinstance(v, str) else v)]
        for name, entity in circuits_from_states(states, [*used, *circuits.values()]).items():
            circuits.setdefault(name, entity)
            if len(circuits) >= MAX_CIRCUITS:
                break
    return EntityMapping(entities=entities, circuits=circuits, invert=invert and power_from_prefs,
                         origin=origin)
