"""Meter values picked out of a JSON document by JSONPath, for the JSON-speaking sources. Pure.

Used by ``http_json`` (any device with a JSON API) and ``tasmota`` (the
SENSOR / Status 10 JSON of an SML script). The paths are JSONPath as
`jsonpath-ng` reads it (its extended parser: filters such as
``$.items[?(@.name=='power')].value`` work too). A configured value must select
exactly one node: none means the value is not in this document, several mean
the path is ambiguous (an error, never a guess).

The selected node is a number, a numeric string (optionally followed by its
unit, ``"1.2 kW"``) or an object ``{"value": …, "unit": …}`` (Fronius, some
gateways): a unit written in the document wins over the configured one, so a
device that switches to kW is not read as W. Every value is then checked:
NaN/Infinity refused, power beyond ``max_power``, a negative or absurd energy
counter, a voltage, current, power factor or frequency that no household
meter shows: each is refused with the reason (:class:`ValueProblem`), and the
whole document is not served — a Reading is never built from part-guesses.

Importing this module loads jsonpath-ng (a pure-Python parser), no client stack.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Any

from meteremu.reading import Reading
from meteremu.sources.values import (
    CURRENT,
    DEFAULT_UNIT,
    ENERGY,
    FREQUENCY,
    KEY_KIND,
    POWER,
    POWER_FACTOR,
    REQUIRED_KEYS,
    UNITS,
    VOLTAGE,
    out_of_range,
    reading_parts,
    unit_factor,
)

MAX_PATH = 1000
"""A longer JSON path is a mistake (and the parser's cost grows with it)."""

MAX_DOCUMENT = 1 << 20
"""Larger bodies are not parsed: a meter's answer is a few kilobytes."""

DEFAULT_MAX_POWER = 100_000.0
"""W, per value: above a large house's main fuse (3 x 100 A x 230 V = 69 kW)."""

MAX_ENERGY = 1e12
"""Wh: a lifetime counter beyond a terawatt-hour is a unit or parse mistake."""

LIMITS: dict[str, tuple[float, float]] = {
    VOLTAGE: (0.0, 1000.0),
    CURRENT: (-1000.0, 1000.0),
    POWER_FACTOR: (-1.0, 1.0),
    FREQUENCY: (0.0, 100.0),
}
"""Accepted range of the other kinds, in canonical units (V, A, fraction, Hz)."""


class PathError(ValueError):
    """A JSON path that cannot be read."""


class DocumentError(ValueError):
    """A body that is not a usable JSON document."""


class ValueProblem(ValueError):
    """A value that is missing, not a number or out of range: the document is not served."""


@dataclass(frozen=True, eq=False)
class JsonPath:
    """A compiled JSONPath (jsonpath-ng's extended syntax)."""

    text: str
    expression: Any

    def find(self, doc: Any) -> list[Any]:
        """Every value the path selects in ``doc`` (jsonpath-ng's errors become PathError)."""
        try:
            return [match.value for match in self.expression.find(doc)]
        except RecursionError:
            raise DocumentError("JSON nested too deeply") from None
        except Exception as exc:  # noqa: BLE001 - a path applied to an odd document: not our crash
            raise PathError(f"{self.text}: {type(exc).__name__}") from None

    def __str__(self) -> str:
        return self.text


@lru_cache(maxsize=256)
def compile_path(text: str) -> JsonPath:
    """``text`` compiled; :class:`PathError` saying why it cannot be."""
    if not isinstance(text, str) or not text.strip():
        raise PathError("an empty JSON path")
    if len(text) > MAX_PATH:
        raise PathError(f"a JSON path shorter than {MAX_PATH} characters")
    from jsonpath_ng.ext import parse

    try:
        expression = parse(text.strip())
    except Exception as exc:  # noqa: BLE001 - the parser raises several kinds (lexer, parser, ply)
        raise PathError(f"a JSON path like $.Body.Data.PowerReal_P_Sum or $['1.8.0']; "
                        f"{text!r}: {str(exc)[:120]}") from None
    return JsonPath(text.strip(), expression)


def name_path(name: str) -> JsonPath:
    """The path of a field found by its name anywhere in the document (``$..'name'``)."""
    if not name or "'" in name or "\\" in name:
        raise PathError(f"a field name without quotes or backslashes; got {name!r}")
    return JsonPath(name, compile_path(f"$..'{name}'").expression)  # messages name the field as configured


def decode_document(body: bytes) -> Any:
    """JSON with exact numbers (``Decimal``); NaN/Infinity refused; :class:`DocumentError`."""
    if len(body) > MAX_DOCUMENT:
        raise DocumentError(f"larger than {MAX_DOCUMENT} bytes")

    def constant(name: str) -> Any:
        raise DocumentError(f"{name} is not a number")

    try:
        return json.loads(body, parse_float=Decimal, parse_int=Decimal, parse_constant=constant)
    except DocumentError:
        raise
    except RecursionError:
        raise DocumentError("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise DocumentError("not UTF-8") from None
    except ValueError as exc:
        raise DocumentError(f"not JSON ({str(exc)[:80]})") from None


# -- one value -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Field:
    """One configured value: the quantity key, its path and conversion."""

    key: str
    index: int  # position in a summed list (energy tariffs); 0 otherwise
    path: JsonPath
    unit: str | None  # the configured unit; None: the canonical one
    factor: Fraction  # scale, and -1 for invert

    @property
    def kind(self) -> str:
        return KEY_KIND[self.key]

    @property
    def required(self) -> bool:
        return self.key in REQUIRED_KEYS

    @property
    def label(self) -> str:
        name = self.key if self.index == 0 else f"{self.key}[{self.index}]"
        return f"{name} ({self.path.text})"


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _number(node: Any, what: str) -> tuple[Decimal, str | None] | None:
    """A node → ``(number, unit written with it)``; None for null."""
    if isinstance(node, dict) and "value" in node:
        unit = node.get("unit", node.get("Unit"))
        number = _number(node["value"], what)
        if number is None or not isinstance(unit, str) or not unit.strip():
            return number
        return number[0], unit.strip()
    if node is None:
        return None
    if isinstance(node, bool):
        raise ValueProblem(f"{what}: {str(node).lower()} is not a number")
    if isinstance(node, Decimal):
        return node, None
    if isinstance(node, int | float):
        return Decimal(str(node)), None
    if isinstance(node, str):
        text = node.strip()
        digits, _, unit = text.partition(" ")
        try:
            value = Decimal(digits)
        except ArithmeticError:
            raise ValueProblem(f"{what}: {_short(text)} is not a number") from None
        return value, unit.strip() or None
    raise ValueProblem(f"{what}: a JSON {'object' if isinstance(node, dict) else 'array'} is not a number")


def convert(field: Field, node: Any, max_power: float = DEFAULT_MAX_POWER) -> float | None:
    """The node's value in the canonical unit of the field's kind, checked; None for null."""
    raw = _number(node, field.label)
    if raw is None:
        return None
    number, written = raw
    if not number.is_finite():
        raise ValueProblem(f"{field.label}: not a finite number")
    if out_of_range(number):
        raise ValueProblem(f"{field.label}: {_short(str(number))} is out of range")
    kind = field.kind
    if written is not None:
        try:
            scale = unit_factor(kind, written)
        except ValueError:
            raise ValueProblem(f"{field.label}: unknown {kind} unit {_short(written)} in the answer") from None
    else:
        scale = UNITS[kind][field.unit if field.unit is not None else DEFAULT_UNIT[kind]]
    value = float(Fraction(number) * scale * field.factor)
    problem = range_problem(kind, value, max_power)
    if problem:
        raise ValueProblem(f"{field.label}: {value:g} {problem}")
    return value


def range_problem(kind: str, value: float, max_power: float = DEFAULT_MAX_POWER) -> str | None:
    """Why ``value`` (canonical unit) cannot be a household meter's ``kind``, if it cannot."""
    if kind == POWER:
        if abs(value) > max_power:
            return f"W is beyond max_power ({max_power:g} W): a unit mistake (W read as kW?)"
        return None
    if kind == ENERGY:
        if value < 0:
            return "Wh is negative: a lifetime counter is not"
        if value > MAX_ENERGY:
            return "Wh is beyond 1 TWh: a unit mistake?"
        return None
    low, high = LIMITS[kind]
    if not low <= value <= high:
        return f"is outside {low:g}..{high:g} {DEFAULT_UNIT[kind] or ''}".rstrip()
    return None


# -- a whole document ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Extraction:
    """The configured values of one document, and what to do with them."""

    fields: tuple[Field, ...]
    invert: bool = False
    max_power: float = DEFAULT_MAX_POWER

    def keys(self) -> set[str]:
        return {f.key for f in self.fields}

    def describe(self) -> dict[str, str]:
        """``{label: unit}`` for ``meter.details``."""
        return {f.label: f.unit or str(DEFAULT_UNIT[f.kind] or "") for f in self.fields}


def select(field: Field, doc: Any) -> Any:
    """The one node ``field``'s path selects; :class:`ValueProblem` when none or several."""
    found = field.path.find(doc)
    if not found:
        raise ValueProblem(f"{field.label} is not in the answer")
    if len(found) > 1:
        raise ValueProblem(f"{field.label} selects {len(found)} values; make the path select one")
    return found[0]


def values_of(extraction: Extraction, doc: Any) -> dict[Field, float]:
    """Every configured value of ``doc``, converted and checked.

    A power value that is absent or null refuses the document (a Reading
    without it would be a made-up zero); other absent or null values are left
    out (a voltage is then nominal, counters are not reported).
    """
    out: dict[Field, float] = {}
    for field in extraction.fields:
        try:
            node = select(field, doc)
        except ValueProblem:
            if field.required:
                raise
            continue
        value = convert(field, node, extraction.max_power)
        if value is None:
            if field.required:
                raise ValueProblem(f"{field.label} is null")
            continue
        out[field] = value
    return out


def reading_of(extraction: Extraction, values: dict[Field, float], measured_at: float) -> Reading:
    """A Reading from the values :func:`values_of` found (summed per key: tariffs)."""
    def value(key: str) -> float | None:
        fields = [f for f in extraction.fields if f.key == key]
        if not fields or any(f not in values for f in fields):
            return None
        return sum(values[f] for f in fields)

    phases, energy = reading_parts(extraction.keys(), value, extraction.invert)
    return Reading(phases=phases, measured_at=measured_at, energy=energy)


def read_document(extraction: Extraction, doc: Any, measured_at: float) -> Reading:
    """``doc`` → Reading; :class:`ValueProblem` or :class:`PathError` when it cannot be served."""
    return reading_of(extraction, values_of(extraction, doc), measured_at)


def fields_from(items: Iterable[tuple[str, int, Any]], resolve: Any) -> tuple[Field, ...]:
    """Fields from ``(key, index, item)`` triples; ``resolve(item)`` → ``(path, unit, scale, invert)``."""
    fields: list[Field] = []
    for key, index, item in items:
        path, unit, scale, invert = resolve(item)
        if unit is not None:
            unit_factor(KEY_KIND[key], unit)
        factor = Fraction(scale) * (-1 if invert else 1)
        fields.append(Field(key, index, path, unit, factor))
    return tuple(fields)
