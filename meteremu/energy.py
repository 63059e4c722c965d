"""Energy counters: trapezoid integration of signed power, kept per phase.

Pure: no clock, no I/O. The Meter decides *when* to integrate (it refuses to
bridge a gap longer than ``stale_after``); this module only does the maths.

Import and export are integrated separately, and a segment whose power
crosses zero is split at the (linearly interpolated) crossing, so that a ramp
from -1 kW to +1 kW counts its negative half as export and its positive half as
import instead of netting them to zero. Counters never decrease.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SECONDS_PER_HOUR = 3600.0


def segment_energy(p0: float, p1: float, dt_s: float) -> tuple[float, float]:
    """Return ``(import_wh, export_wh)`` for power going linearly p0→p1 over dt_s.

    Both results are >= 0. A non-positive ``dt_s`` yields nothing.
    """
    if dt_s <= 0:
        return 0.0, 0.0
    hours = dt_s / SECONDS_PER_HOUR
    if p0 >= 0 and p1 >= 0:
        return (p0 + p1) / 2 * hours, 0.0
    if p0 <= 0 and p1 <= 0:
        return 0.0, -(p0 + p1) / 2 * hours
    # Sign change: split at the zero crossing t* = p0 / (p0 - p1) of the segment.
    frac = p0 / (p0 - p1)
    first = abs(p0) / 2 * hours * frac
    second = abs(p1) / 2 * hours * (1 - frac)
    if p0 > 0:
        return first, second
    return second, first


@dataclass
class PhaseEnergy:
    """Lifetime counters of one phase, in Wh."""

    import_wh: float = 0.0
    export_wh: float = 0.0


class EnergyCounters:
    """Monotonic import/export counters for a fixed number of phases."""

    def __init__(self, phases: int = 3) -> None:
        self.phases = [PhaseEnergy() for _ in range(phases)]

    def add_segment(self, p0: Sequence[float], p1: Sequence[float], dt_s: float) -> None:
        """Integrate one sample-to-sample segment for every phase."""
        for i, counter in enumerate(self.phases):
            a = p0[i] if i < len(p0) else 0.0
            b = p1[i] if i < len(p1) else 0.0
            imp, exp = segment_energy(a, b, dt_s)
            counter.import_wh += imp
            counter.export_wh += exp

    def follow(self, lifetime: Iterable[tuple[float, float]]) -> None:
        """Adopt a source's own lifetime counters, never going backwards.

        A source counter that resets or glitches lower is ignored rather than
        allowed to make our perpetual counter decrease.
        """
        for counter, (imp, exp) in zip(self.phases, lifetime, strict=False):
            counter.import_wh = max(counter.import_wh, imp)
            counter.export_wh = max(counter.export_wh, exp)

    @property
    def total_import_wh(self) -> float:
        return sum(c.import_wh for c in self.phases)

    @property
    def total_export_wh(self) -> float:
        return sum(c.export_wh for c in self.phases)

    def to_dict(self) -> dict[str, list[list[float]]]:
        """A JSON-able snapshot, for the store."""
        return {"phases": [[c.import_wh, c.export_wh] for c in self.phases]}

    def restore(self, data: object) -> None:
        """Load a snapshot written by :meth:`to_dict` (counters only grow).

        Raises ``ValueError`` (and changes nothing) for anything else: a list
        of ``[import_wh, export_wh]`` pairs of finite numbers, at least 0.
        """
        phases = data.get("phases") if isinstance(data, dict) else None
        if not isinstance(phases, list):
            raise ValueError("expected {'phases': [[import_wh, export_wh], ...]}")
        pairs: list[tuple[float, float]] = []
        for item in phases:
            if (not isinstance(item, list | tuple) or len(item) != 2
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in item)):
                raise ValueError(f"expected [import_wh, export_wh] pairs of numbers; got {str(item)[:40]}")
            imp, exp = float(item[0]), float(item[1])
            if not (math.isfinite(imp) and math.isfinite(exp) and imp >= 0 and exp >= 0):
                raise ValueError(f"expected finite counters, 0 or more; got {str(item)[:40]}")
            pairs.append((imp, exp))
        self.follow(pairs)
