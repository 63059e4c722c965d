"""Sharing one total between batteries with weights and limits (pure).

Water-filling: each battery gets its weight's part of the total, clipped to
its envelope; what a clipped battery cannot take goes to the others, by
their weights, until the total is placed or every battery is at a limit.
This is the saturation hand-off: a full or empty battery's envelope shrinks
to where it is, and its share moves to the rest in the same computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One battery as the allocator sees it: weight and envelope (W, + discharge)."""

    weight: float
    lo: float  # most negative output (charge limit, <= 0)
    hi: float  # most positive output (discharge limit, >= 0)


def allocate(total: float, slots: Sequence[Slot]) -> list[float]:
    """Outputs summing to ``total`` where the envelopes allow (else each at its limit)."""
    out = [0.0] * len(slots)
    free = [i for i, s in enumerate(slots) if s.weight > 0 and s.hi > s.lo]
    remaining = total
    for _ in range(len(slots) + 1):
        if not free or abs(remaining) < 1e-9:
            break
        weight = sum(slots[i].weight for i in free)
        clipped = []
        for i in free:
            want = out[i] + remaining * slots[i].weight / weight
            got = min(max(want, slots[i].lo), slots[i].hi)
            if got != want:
                clipped.append(i)
            out[i] = got
        remaining = total - sum(out)
        free = [i for i in free if i not in clipped]
    return out


def concentrate(adjustments: Sequence[float], min_step: float, room: Sequence[tuple[float, float]]) -> list[float]:
    """Move adjustments smaller than ``min_step`` onto the battery with the largest one.

    A battery's firmware ignores a value inside its deadband: five batteries
    each told 8 W would all ignore it, one told 40 W acts. ``room`` is each
    battery's ``(lo, hi)`` room for more adjustment; a folded remainder that
    still falls below ``min_step`` is dropped (the error is inside the
    batteries' own deadband anyway).
    """
    out = list(adjustments)
    small = [i for i, a in enumerate(out) if 0 < abs(a) < min_step]
    if not small:
        return out
    rest = sum(out[i] for i in small)
    for i in small:
        out[i] = 0.0
    order = sorted(range(len(out)), key=lambda i: (-abs(out[i]), -(room[i][1] if rest > 0 else -room[i][0]), i))
    for i in order:
        lo, hi = room[i]
        if lo <= out[i] + rest <= hi:
            out[i] += rest
            break
    return [a if abs(a) >= min_step else 0.0 for a in out]
