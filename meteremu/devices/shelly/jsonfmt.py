"""JSON text with the Shelly firmware's fixed decimals.

The real device prints every float field with a fixed number of decimals
(current 3, voltage/power/freq 1, pf 2, totals 3, energies 2) and never as a
bare integer: a Marstek B2500 crashes on ``"a_act_power":12``. Python's json
module cannot do that, so this small encoder formats floats by their key.
Output is compact, like the device's.

Batteries poll the same status many times a second while it changes about
once a second, so a status can be encoded once and reused: :class:`Encoded`
is a read-only dict that carries its own JSON text, which the encoder writes
as is (see ``ShellyDevice.em_result``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any, NoReturn

_EXACT = {
    "current": 3, "voltage": 1, "act_power": 1, "aprt_power": 1, "pf": 2, "freq": 1,
    "total_current": 3, "total_act_power": 3, "total_aprt_power": 3,
    "total_act": 2, "total_act_ret": 2, "tC": 1, "tF": 1,
    "total_act_energy": 2, "total_act_ret_energy": 2, "ts": 2,
}
_SUFFIX = (
    ("_energy", 2), ("_current", 3), ("_voltage", 1), ("_act_power", 1),
    ("_aprt_power", 1), ("_pf", 2), ("_freq", 1),
)
# Per key seen so far: its JSON text with the colon, and its decimals. The key
# set of the Shelly shapes is small and fixed, but keys also come from
# requests (echoed params), so the memo is bounded.
_KEYS: dict[str, tuple[str, int | None]] = {}
_KEYS_MAX = 4096


def _places(key: str) -> int | None:
    places = _EXACT.get(key)
    if places is None:
        for suffix, n in _SUFFIX:
            if key.endswith(suffix):
                return n
    return places


def _key(key: str) -> tuple[str, int | None]:
    hit = _KEYS.get(key)
    if hit is None:
        hit = (encode_basestring(key) + ":", _places(key))
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[key] = hit
    return hit


def decimals_for(key: str | None) -> int | None:
    """Fixed decimals the firmware uses for ``key``, or None for free floats."""
    return None if key is None else _key(key)[1]


def format_number(value: float | int, places: int | None) -> str:
    if places is None:
        if isinstance(value, int):
            return str(value)
        if not math.isfinite(value):
            return "null"
        return repr(float(value))
    if not math.isfinite(value):
        return "null"
    text = f"{value:.{places}f}"
    if text[0] == "-" and not text.strip("-0."):
        text = text[1:]  # never print -0.0
    return text


class Encoded(dict):
    """A result object whose compact JSON text is already known.

    Still a dict (handlers, tests and the notifier read it as one), but
    read-only: the cached text must never disagree with the contents.
    """

    __slots__ = ("json", "raw")

    def __init__(self, obj: dict[str, Any]) -> None:
        super().__init__(obj)
        self.json = dumps(obj)
        self.raw = self.json.encode("utf-8", "backslashreplace")  # what dumpb() would give

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("an Encoded result is read-only: copy it with dict(...) first")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only
    __ior__ = _read_only


def _encode(obj: object, places: int | None, out: Callable[[str], object]) -> None:
    """Write ``obj``; ``places`` are the decimals its key asks for (numbers only)."""
    kind = type(obj)
    if kind is str:
        out(encode_basestring(obj))  # type: ignore[arg-type]
    elif kind is float or kind is int:
        out(format_number(obj, places))  # type: ignore[arg-type]
    elif kind is Encoded:
        out(obj.json)  # type: ignore[attr-defined]
    elif obj is None:
        out("null")
    elif obj is True:
        out("true")
    elif obj is False:
        out("false")
    elif isinstance(obj, dict):
        sep = "{"
        for k, v in obj.items():
            text, key_places = _key(k if type(k) is str else str(k))
            out(sep)
            out(text)
            _encode(v, key_places, out)
            sep = ","
        out("{}" if sep == "{" else "}")
    elif isinstance(obj, list | tuple):
        sep = "["
        for v in obj:
            out(sep)
            _encode(v, None, out)
            sep = ","
        out("[]" if sep == "[" else "]")
    elif isinstance(obj, str):
        out(encode_basestring(obj))
    elif isinstance(obj, int | float):
        out(format_number(obj, places))
    else:
        raise TypeError(f"cannot encode {type(obj).__name__}")


def dumps(obj: object) -> str:
    """Serialise ``obj`` compactly with the firmware's number formatting."""
    if type(obj) is Encoded:
        return obj.json
    parts: list[str] = []
    _encode(obj, None, parts.append)
    return "".join(parts)


def dumpb(obj: object) -> bytes:
    if type(obj) is Encoded:
        return obj.raw
    # A lone surrogate echoed back from a request (an id, a src, a method
    # name) cannot be UTF-8: write it as a JSON escape (e.g. \ud800) instead.
    return dumps(obj).encode("utf-8", "backslashreplace")
