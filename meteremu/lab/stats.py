"""Means over seeds with 95 % bootstrap intervals, and paired differences (pure).

Percentile bootstrap of the mean, 2000 resamples from a generator seeded by
the data's own size (so a report is reproducible to the digit). Paired:
when two runs share their seeds, the interval of the mean *difference* over
those seeds is much tighter than comparing two separate intervals, because
both sides saw the same households.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

RESAMPLES = 2000
LEVEL = 0.95


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def bootstrap(values: Sequence[float], resamples: int = RESAMPLES, level: float = LEVEL,
              seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its percentile-bootstrap interval."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0, 0.0
    centre = mean(values)
    if n == 1 or min(values) == max(values):
        return centre, centre, centre
    rng = random.Random(seed * 7919 + n)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    low = means[int(tail * (resamples - 1))]
    high = means[int((1.0 - tail) * (resamples - 1))]
    return centre, low, high


def paired(base: Sequence[float], head: Sequence[float]) -> tuple[float, float, float]:
    """Bootstrap of ``head − base`` over paired seeds: ``(mean, low, high)``."""
    return bootstrap([h - b for b, h in zip(base, head, strict=True)])
