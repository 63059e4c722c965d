"""JSON text with the Shelly firmware's fixed decimals.

The real device prints every float field with a fixed number of decimals
(current 3, voltage/power/freq 1, pf 2, totals 3, energies 2) and never as a
bare integer: a Marstek B2500 crashes on ``"a_act_power":12``. Python's json
module cannot do that, so this small encoder formats floats by their key.
Output is compact, like the device's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from json.encoder import encode_basestring

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


def decimals_for(key: str | None) -> int | None:
    """Fixed decimals the firmware uses for ``key``, or None for free floats."""
    if key is None:
        return None
    if key in _EXACT:
        return _EXACT[key]
    for suffix, places in _SUFFIX:
        if key.endswith(suffix):
            return places
    return None


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


def _encode(obj: object, key: str | None, out: Callable[[str], object]) -> None:
    if obj is None:
        out("null")
    elif obj is True:
        out("true")
    elif obj is False:
        out("false")
    elif isinstance(obj, str):
        out(encode_basestring(obj))
    elif isinstance(obj, int | float):
        out(format_number(obj, decimals_for(key)))
    elif isinstance(obj, dict):
        out("{")
        first = True
        for k, v in obj.items():
            if not first:
                out(",")
            first = False
            out(encode_basestring(str(k)))
            out(":")
            _encode(v, str(k), out)
        out("}")
    elif isinstance(obj, list | tuple):
        out("[")
        for i, v in enumerate(obj):
            if i:
                out(",")
            _encode(v, None, out)
        out("]")
    else:
        raise TypeError(f"cannot encode {type(obj).__name__}")


def dumps(obj: object) -> str:
    """Serialise ``obj`` compactly with the firmware's number formatting."""
    parts: list[str] = []
    _encode(obj, None, parts.append)
    return "".join(parts)


def dumpb(obj: object) -> bytes:
    # A lone surrogate echoed back from a request (an id, a src, a method
    # name) cannot be UTF-8: write it as a JSON escape (e.g. \ud800) instead.
    return dumps(obj).encode("utf-8", "backslashreplace")
