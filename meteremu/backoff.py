"""Retry delays shared by the MQTT client and the source services. Pure."""

from __future__ import annotations

import random
from collections.abc import Callable


def next_delay(attempt: int, minimum: float, maximum: float,
               rnd: Callable[[], float] = random.random, jitter: float = 0.5) -> float:
    """Wait after failure number ``attempt`` (1 = the first): ``minimum * 2**(attempt - 1)``
    capped at ``maximum``, times a random factor in ``[1 - jitter, 1]``."""
    step = min(maximum, minimum * 2 ** min(max(0, attempt - 1), 30))
    return step * ((1.0 - jitter) + jitter * rnd())
