"""What the unit and integration tests of mqtt share (helpers, data)."""

from __future__ import annotations

from typing import Any

from meteremu.reading import Reading
from tests.support import sample_reading

T0 = 1_700_000_000.0


def three_phase(t: float = T0, powers: tuple[float, float, float] = (2166.2, 3.6, -244.0),
                extras: dict[str, float] | None = None, energy: Any = None) -> Reading:
    base = sample_reading(t, powers)
    return Reading(base.phases, t, energy=energy, extras=extras or {})
