"""InfluxDB line protocol, formatted by hand (pure: no I/O, no clock).

``<measurement>[,<tag>=<value>…] <field>=<value>[,…] [<timestamp>]``, one
point per line (sources-sinks.md §5.1). Escaping, with a backslash:

================================  ===============================
element                           escaped characters
================================  ===============================
measurement                       comma, space
tag key, tag value, field key     comma, equals sign, space
string field value                double quote, backslash
================================  ===============================

Rules this module enforces so that a point never breaks a whole batch:

* newlines (``\\n``, ``\\r``) are never allowed in line protocol: they are
  replaced by a space (then escaped);
* a backslash is literal in names and tags, but one that ends the element or
  stands before an escaped character would escape the delimiter (InfluxDB 1.x
  has no ``\\\\`` in names and tags): it is replaced by ``/``;
* tags with an empty key or value are left out, tags are sorted by key;
* non-finite floats (NaN, ±inf) are not representable: the field is left out;
  a point left without fields is not written (``format_point`` returns None);
* ``bool`` → ``true``/``false``, ``int`` → ``5i``, ``float`` → ``1.5``
  (``repr``, shortest round-trip), ``str`` → ``"…"``;
* timestamps are epoch seconds, converted exactly to an integer in the
  precision's unit (``s``, ``ms``, ``us``, ``ns``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal

FieldValue = bool | int | float | str

PRECISIONS: dict[str, int] = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}

_NEWLINES = re.compile(r"[\r\n]")


class LineProtocolError(ValueError):
    """A point that cannot be written at all (e.g. an empty measurement name)."""


def _escape(text: str, special: str) -> str:
    text = _NEWLINES.sub(" ", text)
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            nxt = text[i + 1] if i + 1 < len(text) else ""
            out.append("/" if nxt == "" or nxt in special else "\\")
        elif ch in special:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def escape_measurement(name: str) -> str:
    """Escape commas and spaces."""
    return _escape(name, ", ")


def escape_key(text: str) -> str:
    """Escape a tag key, tag value or field key: commas, equals signs, spaces."""
    return _escape(text, ",= ")


def quote_string(value: str) -> str:
    """A string field value: wrapped in double quotes, ``"`` and ``\\`` escaped."""
    value = _NEWLINES.sub(" ", value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_value(value: FieldValue) -> str | None:
    """One field value, or None when it cannot be represented (NaN, ±inf)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return repr(value)
    if isinstance(value, str):
        return quote_string(value)
    raise LineProtocolError(f"unsupported field type {type(value).__name__}")


def format_timestamp(seconds: float, precision: str = "ms") -> int:
    """Epoch seconds → an integer in ``precision`` units, rounded half to even.

    Goes through ``Decimal`` so ``ns`` keeps every digit of the float.
    """
    try:
        factor = PRECISIONS[precision]
    except KeyError:
        raise LineProtocolError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}") from None
    if not math.isfinite(seconds):
        raise LineProtocolError("timestamp is not finite")
    return int((Decimal(seconds) * factor).to_integral_value())


def format_point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
    timestamp: float | None = None,
    precision: str = "ms",
) -> str | None:
    """One line (without the trailing newline), or None if no field is representable."""
    if not measurement or not _NEWLINES.sub("", measurement).strip():
        raise LineProtocolError("empty measurement name")
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        tag = tags[key]
        if key and tag:
            parts.append(f"{escape_key(key)}={escape_key(tag)}")
    field_parts = []
    for key, value in fields.items():
        if not key:
            continue
        text = format_value(value)
        if text is not None:
            field_parts.append(f"{escape_key(key)}={text}")
    if not field_parts:
        return None
    line = ",".join(parts) + " " + ",".join(field_parts)
    if timestamp is not None:
        line += f" {format_timestamp(timestamp, precision)}"
    return line


def format_lines(lines: Iterable[str]) -> bytes:
    """A request body: each line terminated by ``\\n``, UTF-8."""
    return b"".join(line.encode("utf-8") + b"\n" for line in lines)
