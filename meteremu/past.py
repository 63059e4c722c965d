"""A source's own account of its past: what a backfill may write as history.

Only a source that can *compute* its past may offer one, and only the
simulator can: its household is a pure function of time, so the readings it
would have produced an hour or a fortnight ago are as well defined as the
next one. A real meter's past can only be measured, never made up, so no
other source offers one (design rule: never fabricate data).

The offer travels the usual way, source → Meter → whoever listens (the
forecast dataset writes it to the store); nothing downstream calls a source.
Every offer carries a ``label`` that says what it is, and wherever backfilled
data is shown, it is shown with that label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: total, phase A, phase B, phase C active power in W at a source-clock time
PowerAt = Callable[[float], tuple[float, float, float, float]]


@dataclass(frozen=True)
class Past:
    """The source's readings over ``[start, end)`` on its own clock, on demand.

    ``end`` is where the source's live readings begin; ``power_at`` is pure
    (the same ``t`` always gives the same values) and cheap enough to call a
    few hundred thousand times.
    """

    start: float
    end: float
    power_at: PowerAt
    label: str
