"""What the unit and integration tests of shelly_ws share (helpers, data)."""

from __future__ import annotations

from typing import Any


def differs(old: Any, new: Any, epsilon: float) -> bool:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (old, new))
    return abs(new - old) > epsilon if numbers else old != new


def merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive overlay, as aioshelly's ``mergedicts`` applies NotifyStatus."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out
