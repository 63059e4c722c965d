"""MQTT input, the pure part: JSON paths, payload values, units, and Readings.

No reactor, no sockets, no paho: ``source.py`` hands every received message
to :meth:`Combiner.message` and acts on the :class:`Outcome`.

JSON paths (:func:`parse_path`) — a small, fully tested subset of JSONPath
(no filters, slices, unions or wildcards; a path selects at most one value)::

    $.SML.Power            $['ENERGY']["Total"]     $.Body.Data[0].P
    $.data[-1]             $..power                 SML.Power / Body.Data.0.P

The lookups are jsonpath-ng's (``Fields``, ``Index``, ``Descendants``), as in
the http_json and tasmota sources; the syntax is this subset, parsed here, so
that a dotted segment of digits can index a list and ``..name`` picks one
value, as users of the MQTT source have written paths since it existed.

``$`` is the document (optional); ``.name`` or ``['name']`` a key;
``[N]`` a list index (negative from the end); ``..name`` the first ``name``
anywhere below, in document order. A dotted segment of digits indexes a list
(``Data.0``) and is a key in an object. Dotted names stop at ``.`` and ``[``;
other keys need the bracket form.

Payloads (:func:`sample`): without a path the whole payload is the number —
plain text (``230.4``), optionally followed by its unit (``230.4 V``, as
openHAB publishes), or a JSON number or numeric JSON string. With a path the
payload must be JSON and the path must lead to a number or a numeric string.
``unknown``, ``null``, an empty payload or an absent path (no sample: the last
value stays) and ``unavailable`` (a power value: the meter is down) follow
Home Assistant's conventions.

Readings (:class:`Combiner`): the latest value of every configured key is
kept; each message that brings a new sample builds a new Reading from all of
them (keys as in the Home Assistant source: ``power`` or ``a/b/c_power``,
``*_power_export``, voltages, currents, pf, frequency, ``energy_import`` /
``energy_export``). Power values are required: none is served before each has
arrived.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import cached_property
from typing import Any

from meteremu.reading import Reading
from meteremu.sources.values import (
    DEFAULT_UNIT,
    KEY_KIND,
    POWER,
    REQUIRED_KEYS,
    UNITS,
    Smoother,
    next_measured_at,
    out_of_range,
    reading_parts,
    unit_factor,
)

MAX_PAYLOAD = 1 << 20
"""Larger payloads are not parsed (a meter value is a few hundred bytes)."""

MAX_AHEAD = 300.0
"""A payload time further ahead of the arrival time than this is a clock glitch: the arrival time is used."""

# -- JSON paths ---------------------------------------------------------------------


class PathError(ValueError):
    """A JSON path that this subset cannot read."""


@dataclass(frozen=True)
class Step:
    kind: str  # "key" | "index" | "name" (a dotted name: key, or list index if digits) | "deep"
    arg: str | int


@dataclass(frozen=True)
class Path:
    text: str
    steps: tuple[Step, ...]

    @cached_property
    def _lookups(self) -> tuple[tuple[Any, Any], ...]:
        """Per step, jsonpath-ng's path node, and the ``Index`` a dotted digit segment takes
        in a list (built once, on the first payload: validating a config imports nothing)."""
        from jsonpath_ng.jsonpath import Descendants, Fields, Index, This

        out: list[tuple[Any, Any]] = []
        for step in self.steps:
            if step.kind == "deep":
                out.append((Descendants(This(), Fields(str(step.arg))), None))
            elif step.kind == "index":
                out.append((Index(int(step.arg)), None))
            else:
                digits = step.kind == "name" and str(step.arg).isdigit()
                out.append((Fields(str(step.arg)), Index(int(step.arg)) if digits else None))
        return tuple(out)

    def find(self, doc: Any) -> Any:
        """The value at this path; raises ``KeyError`` when it is not there.

        The syntax stays this module's subset (parsed and validated by
        :func:`parse_path`, with its messages); the lookups are jsonpath-ng's:
        ``Fields`` for a key, ``Index`` for a list index, ``Descendants`` (an
        iterative pre-order walk, so the first match is the first in document
        order) for ``..name``. A dotted segment of digits is a key in an object
        and an index in a list.
        """
        node = doc
        for step, (lookup, in_list) in zip(self.steps, self._lookups, strict=True):
            matches = (in_list if in_list is not None and isinstance(node, list) else lookup).find(node)
            if not matches:
                raise KeyError(step.arg)
            node = matches[0].value
        return node

    def __str__(self) -> str:
        return self.text


_MISSING = object()


_NAME = re.compile(r"[^.\[\]]+")
_INDEX = re.compile(r"\[\s*(-?\d+)\s*\]")
_QUOTED = re.compile(r"""\[\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\s*\]""")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_path(text: str) -> Path:
    """Compile a JSON path of the subset described in the module docstring."""
    if not isinstance(text, str) or not text.strip():
        raise PathError("an empty JSON path")
    source = text.strip()
    steps: list[Step] = []
    pos = 0
    if source.startswith("$"):
        pos = 1
    else:
        match = _NAME.match(source)
        if match is None:
            raise PathError(f"a JSON path like $.a.b[0] or a.b.0; got {text!r}")
        steps.append(Step("name", match.group(0).strip()))
        pos = match.end()
    while pos < len(source):
        rest = source[pos:]
        if rest.startswith(".."):
            match = _NAME.match(source, pos + 2)
            if match is None:
                raise PathError(f"a name after '..' at position {pos + 2} of {text!r}")
            steps.append(Step("deep", match.group(0).strip()))
            pos = match.end()
        elif rest.startswith("."):
            match = _NAME.match(source, pos + 1)
            if match is None:
                raise PathError(f"a name after '.' at position {pos + 1} of {text!r}")
            steps.append(Step("name", match.group(0).strip()))
            pos = match.end()
        elif rest.startswith("["):
            index = _INDEX.match(source, pos)
            quoted = _QUOTED.match(source, pos)
            if index is not None:
                steps.append(Step("index", int(index.group(1))))
                pos = index.end()
            elif quoted is not None:
                name = quoted.group(1) if quoted.group(1) is not None else quoted.group(2)
                steps.append(Step("key", _unescape(name)))
                pos = quoted.end()
            else:
                raise PathError(f"[N] or ['name'] at position {pos} of {text!r} "
                                "(filters, slices and wildcards are not supported)")
        else:
            raise PathError(f"'.', '..' or '[' at position {pos} of {text!r}")
    if any(s.kind in ("name", "deep") and s.arg in ("", "*") for s in steps):
        raise PathError(f"a JSON path without wildcards; got {text!r}")
    return Path(source, tuple(steps))


# -- units: :func:`meteremu.sources.values.unit_factor` (imported above, kept importable from here)


# -- payload values ----------------------------------------------------------------------


class SampleError(ValueError):
    """A payload that holds no usable number for a value (warned about, then ignored)."""


class Marker(str):
    pass


UNKNOWN = Marker("unknown")
"""No sample: the last value is kept."""
UNAVAILABLE = Marker("unavailable")
"""The publisher says the value is unavailable."""

_NUMBER_UNIT = re.compile(r"^([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-zµμ%][\w/µμ%]*)?$")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def decode_json(payload: bytes) -> Any:
    """JSON with exact numbers (``Decimal``); raises ``ValueError`` for anything else."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload larger than {MAX_PAYLOAD} bytes")
    try:
        return json.loads(payload, parse_float=Decimal, parse_int=Decimal, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("payload is not UTF-8") from None


def _from_text(text: str) -> tuple[Decimal, str | None] | Marker:
    stripped = text.strip()
    if stripped in ("", "unknown", "null", "None"):
        return UNKNOWN
    if stripped == "unavailable":
        return UNAVAILABLE
    match = _NUMBER_UNIT.match(stripped)
    if match is None:
        raise SampleError(f"{_short(stripped)} is not a number")
    return Decimal(match.group(1)), (match.group(2).strip() if match.group(2) else None)


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def raw_value(node: Any) -> tuple[Decimal, str | None] | Marker:
    """A decoded JSON value (or text) → ``(number, unit written with it)`` or a marker."""
    if node is None:
        return UNKNOWN
    if isinstance(node, bool):
        raise SampleError(f"{str(node).lower()} is not a number")
    if isinstance(node, Decimal):
        return node, None
    if isinstance(node, int | float):
        if isinstance(node, float) and not math.isfinite(node):
            raise SampleError("not a finite number")
        return Decimal(str(node)), None
    if isinstance(node, str):
        return _from_text(node)
    raise SampleError(f"a JSON {'object' if isinstance(node, dict) else 'array'} is not a number")


@dataclass
class Payload:
    """One received payload, decoded at most once however many values read it."""

    data: bytes
    _json: Any = field(default=_MISSING, repr=False)
    _error: str | None = None

    def json(self) -> Any:
        if self._json is _MISSING and self._error is None:
            try:
                self._json = decode_json(self.data)
            except ValueError as err:
                self._error = str(err)
        if self._error is not None:
            raise SampleError(f"payload is not JSON ({self._error})")
        return self._json

    def text(self) -> str:
        if len(self.data) > MAX_PAYLOAD:
            raise SampleError(f"payload larger than {MAX_PAYLOAD} bytes")
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise SampleError("payload is not UTF-8") from None


def sample(payload: Payload, path: Path | None) -> tuple[Decimal, str | None] | Marker:
    """The number (and the unit written beside it) a payload holds for one value."""
    if path is None:
        text = payload.text().strip()
        if text.startswith(("{", "[")):
            raise SampleError("payload is a JSON object or array: set path")
        if text.startswith('"'):
            return raw_value(payload.json())
        return _from_text(text)
    try:
        node = path.find(payload.json())
    except KeyError:
        return UNKNOWN  # the publisher left it out this time: no sample
    return raw_value(node)


def convert(raw: tuple[Decimal, str | None], kind: str, unit: str | None, factor: Fraction) -> float:
    """``raw`` in the canonical unit of ``kind``; a unit written in the payload wins over ``unit``."""
    number, written = raw
    if not number.is_finite():
        raise SampleError("not a finite number")
    if out_of_range(number):
        raise SampleError(f"{_short(str(number))} is out of range")
    if written is not None:
        try:
            unit_scale = unit_factor(kind, written)
        except ValueError:
            raise SampleError(f"unknown {kind} unit {_short(written)} in the payload") from None
    else:
        unit_scale = UNITS[kind][unit]
    return float(Fraction(number) * unit_scale * factor)


def parse_time(node: Any) -> float | None:
    """Epoch seconds (or milliseconds, as a number above 10^11) or ISO 8601 → epoch seconds.

    An ISO time without a zone (Tasmota's ``Time``) is read in this host's zone.
    """
    if isinstance(node, bool) or node is None:
        return None
    if isinstance(node, Decimal | int | float):
        value = float(node)
    elif isinstance(node, str):
        text = node.strip()
        try:
            value = float(Decimal(text))
        except InvalidOperation:
            try:
                value = datetime.fromisoformat(text).timestamp()
            except (ValueError, OverflowError, OSError):
                return None
            return value if value > 0 else None
    else:
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return value / 1000.0 if value > 1e11 else value


# -- the layout ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Spec:
    """One configured value: where it comes from and how it is converted (hashed by identity)."""

    key: str
    index: int  # position in a summed list (energy tariffs); 0 otherwise
    topic: str
    path: Path | None
    unit: str | None
    factor: Fraction  # scale, and -1 for invert
    kind: str

    @property
    def required(self) -> bool:
        return self.key in REQUIRED_KEYS

    @property
    def label(self) -> str:
        name = self.key if self.index == 0 else f"{self.key}[{self.index}]"
        return f"{name} ({self.topic}{' ' + self.path.text if self.path else ''})"


@dataclass(frozen=True)
class Layout:
    specs: tuple[Spec, ...]
    timestamp_path: Path | None = None
    availability_topic: str | None = None
    availability_path: Path | None = None
    payload_available: str = "online"
    payload_not_available: str = "offline"
    invert: bool = False

    def topics(self) -> list[str]:
        """Every topic to subscribe to, in a stable order, without duplicates."""
        topics: list[str] = []
        for topic in [*(s.topic for s in self.specs), self.availability_topic]:
            if topic is not None and topic not in topics:
                topics.append(topic)
        return topics

    def keys(self) -> set[str]:
        return {s.key for s in self.specs}

    def describe(self) -> dict[str, Any]:
        """JSON-able, for the log and ``meter.details``."""
        values: dict[str, Any] = {}
        for s in self.specs:
            entry = {"topic": s.topic, **({"path": s.path.text} if s.path else {}),
                     **({"unit": s.unit} if s.unit else {}),
                     **({"factor": float(s.factor)} if s.factor != 1 else {})}
            if s.key in values:
                values[s.key] = [*(values[s.key] if isinstance(values[s.key], list) else [values[s.key]]), entry]
            else:
                values[s.key] = entry
        return {"values": values, "invert": self.invert,
                "timestamp_path": self.timestamp_path.text if self.timestamp_path else None,
                "availability_topic": self.availability_topic}


def _value_spec(key: str, index: int, value: Any, default_topic: str | None) -> Spec:
    """A configured value (a topic string, ``$path`` string or a Value mapping) → Spec."""
    kind = KEY_KIND[key]
    topic: str | None
    path: str | None
    unit: str | None
    if isinstance(value, str):
        topic, path, unit, scale, invert = value, None, None, 1.0, False
        if value.startswith("$"):
            topic, path = default_topic, value
    else:
        topic = value.topic or default_topic
        path, unit, scale, invert = value.path, value.unit, value.scale, value.invert
    if topic is None:
        raise ValueError(f"{key}: no topic (set it here or the source's topic)")
    if unit is None:
        unit = DEFAULT_UNIT[kind]
    unit_factor(kind, unit)
    factor = Fraction(scale) * (-1 if invert else 1)
    return Spec(key, index, topic, parse_path(path) if path else None, unit, factor, kind)


def layout_from_options(options: Any) -> Layout:
    """The Layout of validated source options (``meteremu.sources.mqtt.Options``)."""
    specs = [_value_spec(key, index, item, options.topic) for key, index, item in options.values.items()]
    return Layout(
        specs=tuple(specs),
        timestamp_path=parse_path(options.timestamp_path) if options.timestamp_path else None,
        availability_topic=options.availability_topic,
        availability_path=parse_path(options.availability_path) if options.availability_path else None,
        payload_available=options.payload_available,
        payload_not_available=options.payload_not_available,
        invert=options.invert,
    )


# -- building readings -------------------------------------------------------------------


@dataclass
class Outcome:
    """What one message (or check) means for the Meter."""

    reading: Reading | None = None
    down: str | None = None
    up: bool = False  # the availability topic said online again
    new: bool = False  # a new sample arrived (a reading may still wait for the others)
    waiting: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Combiner:
    """The latest value of every configured key → Readings. Pure and synchronous.

    Time: ``now`` is passed in by the caller (arrival time, on the steady
    clock: expiry is judged on it), and ``wall``, the wall clock at arrival
    (default ``now``), for timestamps. A sample's time is the payload's
    timestamp (``timestamp_path``) when it has one, else its arrival on the
    wall clock (also when the payload's time is more than :data:`MAX_AHEAD`
    ahead of the arrival: a clock glitch). A sample with the same payload
    timestamp as the value's current one is a repeat; so is a *retained*
    message whose payload is
    byte-identical to the last one on its topic (the broker re-sends retained
    messages on every subscribe). A Reading's ``measured_at`` is the newest
    time of the samples it brings, nudged 1 ms past the previous Reading if
    it is not later (two topics published in the same instant).
    """

    def __init__(self, layout: Layout, smoother: Smoother | None = None, expire_after: float = 0.0) -> None:
        self.layout = layout
        self.smoother = smoother or Smoother()
        self.expire_after = expire_after
        self.by_topic: dict[str, list[Spec]] = {}
        for spec in layout.specs:
            self.by_topic.setdefault(spec.topic, []).append(spec)
        self.values: dict[Spec, float] = {}
        self.stamps: dict[Spec, float] = {}  # sample time of the value held
        self.arrived: dict[Spec, float] = {}  # when the value held arrived (expiry)
        self.unavailable: set[Spec] = set()
        self.offline = False  # the availability topic says not available
        self.held = False  # a new sample arrived while offline: build a reading once online
        self.last_payload: dict[str, bytes] = {}
        self.last_measured_at: float | None = None
        self._warned: set[tuple[str, str]] = set()

    # -- state -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Every power value is there, none is unavailable, and the publisher is not offline."""
        return not self.offline and not self.unavailable and not self.missing()

    def missing(self) -> list[Spec]:
        return [s for s in self.layout.specs if s.required and s not in self.values]

    def expired(self, now: float) -> list[Spec]:
        """Power values without a new sample for longer than ``expire_after`` (if set)."""
        if not self.expire_after:
            return []
        return [s for s in self.layout.specs
                if s.required and s in self.arrived and now - self.arrived[s] > self.expire_after]

    def healthy(self, now: float) -> bool:
        """Ready, and no power value has expired: the meter may be called alive."""
        return self.ready and not self.expired(now)

    def expiry(self, now: float) -> str | None:
        """Why the values are too old to serve, if they are."""
        expired = self.expired(now)
        if not expired:
            return None
        return f"no new sample of {expired[0].label} for over {self.expire_after:g} s (expire_after)"

    # -- input ----------------------------------------------------------------------
    def _warn(self, outcome: Outcome, what: str, why: str) -> None:
        if (what, why) not in self._warned:
            self._warned.add((what, why))
            outcome.warnings.append(f"{what}: {why}; sample ignored")

    def message(self, topic: str, data: bytes, retained: bool, now: float,
                wall: float | None = None) -> Outcome:
        outcome = Outcome()
        arrival = now if wall is None else wall
        payload = Payload(data)
        if topic == self.layout.availability_topic:
            self._availability(payload, outcome)
        specs = self.by_topic.get(topic)
        if not specs:
            return self._finish(outcome, [], now)
        repeat = retained and self.last_payload.get(topic) == data
        self.last_payload[topic] = data
        if repeat:
            return self._finish(outcome, [], now)
        stamp = arrival
        if self.layout.timestamp_path is not None:
            stamp = self._timestamp(payload, topic, arrival, retained, outcome)
        stamps: list[float] = []
        for spec in specs:
            self._sample(spec, payload, stamp, now, outcome, stamps)
        return self._finish(outcome, stamps, now)

    def _timestamp(self, payload: Payload, topic: str, now: float, retained: bool, outcome: Outcome) -> float:
        """The payload's own time, or ``now`` (the wall-clock arrival)."""
        path = self.layout.timestamp_path
        assert path is not None
        try:
            node = path.find(payload.json())
        except (SampleError, KeyError):
            return now  # plain payloads and payloads without it: the arrival time
        stamp = parse_time(node)
        if stamp is None:
            self._warn(outcome, f"{topic} {path.text}", f"{_short(str(node))} is not a time")
            return now
        if stamp > now + MAX_AHEAD:
            # One glitch stamped years ahead must not make every later sample "not new".
            self._warn(outcome, f"{topic} {path.text}",
                       f"{_short(str(node))} is more than {MAX_AHEAD:g} s ahead of this host's clock "
                       "(the arrival time is used)")
            return now
        return stamp

    def _sample(self, spec: Spec, payload: Payload, stamp: float, now: float, outcome: Outcome,
                stamps: list[float]) -> None:
        try:
            raw = sample(payload, spec.path)
            if raw is UNKNOWN:
                return
            if raw is UNAVAILABLE:
                self.arrived.pop(spec, None)
                self.stamps.pop(spec, None)
                self.smoother.reset(spec)
                if spec.required:
                    self.unavailable.add(spec)
                    outcome.down = f"{spec.label} is unavailable"
                elif self.values.pop(spec, None) is not None:
                    stamps.append(stamp)  # drop it from the served values
                return
            assert isinstance(raw, tuple)
            value = convert(raw, spec.kind, spec.unit, spec.factor)
        except SampleError as err:
            self._warn(outcome, spec.label, str(err))
            return
        if self.layout.timestamp_path is not None and self.stamps.get(spec) == stamp:
            return  # the same sample again (an older time is taken: the publisher's clock stepped back)
        self.unavailable.discard(spec)
        if spec.kind == POWER:
            value = self.smoother(spec, value)
        self.values[spec] = value
        self.stamps[spec] = stamp
        self.arrived[spec] = now
        stamps.append(stamp)

    def _availability(self, payload: Payload, outcome: Outcome) -> None:
        path = self.layout.availability_path
        try:
            node: Any = payload.text() if path is None else path.find(payload.json())
        except (SampleError, KeyError):
            return
        if isinstance(node, bool):
            text = "true" if node else "false"
        elif isinstance(node, Decimal | int | float):
            text = str(node)
        elif isinstance(node, str):
            text = node.strip()
        else:
            return
        topic = self.layout.availability_topic
        if text.lower() == self.layout.payload_not_available.lower():
            self.offline = True
            outcome.down = f"{topic} says {text!r}"
        elif text.lower() == self.layout.payload_available.lower():
            if self.offline:
                self.offline = False
                outcome.up = True
        elif text:
            self._warn(outcome, f"availability topic {topic}",
                       f"{_short(text)} is neither {self.layout.payload_available!r} "
                       f"nor {self.layout.payload_not_available!r}")

    def _finish(self, outcome: Outcome, stamps: list[float], now: float) -> Outcome:
        if stamps:
            outcome.new = True
        if outcome.down is not None:
            return outcome
        if self.offline:
            # The meter was marked down when the publisher said so; the samples
            # are kept and served once it says it is available again.
            self.held = self.held or bool(stamps)
            return outcome
        if outcome.up and self.held:
            self.held = False
            stamps = [*stamps, max(self.stamps.values(), default=0.0)]
        if not stamps:
            return outcome
        if self.unavailable:
            outcome.down = f"{sorted(s.label for s in self.unavailable)[0]} is unavailable"
            return outcome
        missing = self.missing()
        if missing:
            outcome.waiting = [s.label for s in missing]
            return outcome
        expiry = self.expiry(now)
        if expiry is not None:
            outcome.down = expiry
            return outcome
        measured_at = self.last_measured_at = next_measured_at(stamps, self.last_measured_at)
        outcome.reading = self.reading(measured_at)
        return outcome

    # -- the reading -------------------------------------------------------------------
    def value(self, key: str) -> float | None:
        """The value of ``key`` (several are summed; None until each has one)."""
        specs = [s for s in self.layout.specs if s.key == key]
        if not specs or any(s not in self.values for s in specs):
            return None
        return sum(self.values[s] for s in specs)

    def reading(self, measured_at: float) -> Reading:
        phases, energy = reading_parts(self.layout.keys(), self.value, self.layout.invert)
        return Reading(phases=phases, measured_at=measured_at, energy=energy)


def topic_problem(value: str, what: str = "topic") -> str | None:
    """Why ``value`` cannot be subscribed to as one exact topic (None if it can)."""
    if not value:
        return f"a non-empty {what}"
    if any(c in value for c in "+#\x00"):
        return f"an exact {what} without the wildcards + and #; got {value!r}"
    if len(value.encode("utf-8")) > 65535:
        return f"a {what} shorter than 65536 bytes"
    return None
