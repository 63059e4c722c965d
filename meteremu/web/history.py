"""The dashboard's measured-power history, and where each part of it came from (pure).

Why in parts: a chart of 6 h, 24 h or 7 d must come from the stored dataset
(one mean per ``resolution`` bucket), not from the Meter's ring of the last
3,600 readings, which holds an hour at most; and the newest seconds, not yet
in a finished bucket, only the ring has. Backfilled buckets are the
simulator's computed past, not measurements, so they are a part of their own
with the label the source gave them. ``/ui/power`` sends the parts beside the
points, and the page shows them.

Sources of a part:

- ``dataset``: finished buckets of the forecast dataset (the store, and its
  in-memory copy of the last hours), at ``resolution`` or a whole multiple of
  it for long spans;
- ``backfill``: dataset buckets inside a backfilled range (labelled);
- ``ring``: the Meter's own readings, after the last dataset bucket, or all of
  the history when forecasting is off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Point = tuple[float, float]
Range = tuple[float, float, str]  # start, end, label

MAX_POINTS = 2400  # 6 h at 10 s is 2,160 buckets: sent at the dataset's own resolution
RING_MAX_POINTS = 720
DATASET_LABEL = "the source's readings, one mean per bucket (forecast dataset, from the store)"
RING_LABEL = "the source's latest readings (the meter's recent ring, not yet in the dataset)"


@dataclass(frozen=True)
class Part:
    """A run of history points from one source."""

    source: str
    start: float
    end: float
    points: int
    resolution: float | None
    label: str

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "from": round(self.start, 3), "to": round(self.end, 3),
                "points": self.points, "resolution": self.resolution, "label": self.label}


def downsample(points: Sequence[tuple[float, float]], max_points: int) -> list[tuple[float, float]]:
    """Pure: at most ``max_points`` points, each the mean (time and value) of an equal time slice."""
    if len(points) <= max_points or max_points < 1:
        return list(points)
    first, last = points[0][0], points[-1][0]
    width = (last - first) / max_points or 1.0
    out: list[tuple[float, float]] = []
    slot, t_sum, v_sum, count = None, 0.0, 0.0, 0
    for t, v in points:
        index = min(max_points - 1, int((t - first) / width))
        if index != slot and count:
            out.append((t_sum / count, v_sum / count))
            t_sum = v_sum = 0.0
            count = 0
        slot = index
        t_sum += t
        v_sum += v
        count += 1
    if count:
        out.append((t_sum / count, v_sum / count))
    return out


def step_for(span: float, resolution: float, max_points: int = MAX_POINTS) -> float:
    """The chart's bucket width: ``resolution``, or the smallest whole multiple that fits."""
    return resolution * max(1, math.ceil(span / resolution / max_points - 1e-9))


def slot(ts: float, step: float) -> float:
    return math.floor(ts / step + 1e-9) * step


def group_means(points: Iterable[Point], step: float) -> list[Point]:
    """Means per ``[k·step, (k+1)·step)`` slot, stamped with the slot's start (time-sorted input)."""
    out: list[Point] = []
    current: float | None = None
    total, count = 0.0, 0
    for ts, value in points:
        start = slot(ts, step)
        if start != current and count:
            out.append((current if current is not None else start, total / count))
            total, count = 0.0, 0
        current = start
        total += value
        count += 1
    if count and current is not None:
        out.append((current, total / count))
    return out


def in_ranges(ts: float, ranges: Sequence[Range]) -> str | None:
    """The label of the backfilled range holding ``ts``, if any."""
    for start, end, label in ranges:
        if start <= ts < end:
            return label
    return None


def split_parts(points: Sequence[Point], step: float, ranges: Sequence[Range]) -> list[Part]:
    """Runs of ``dataset`` and ``backfill`` points (a slot belongs where its start lies)."""
    parts: list[Part] = []
    run_source: str | None = None
    run_label = ""
    run_start = 0.0
    run_n = 0
    last = 0.0
    for ts, _ in points:
        label = in_ranges(ts, ranges)
        source, text = ("backfill", label) if label is not None else ("dataset", DATASET_LABEL)
        if source != run_source or text != run_label:
            if run_source is not None:
                parts.append(Part(run_source, run_start, last + step, run_n, step, run_label))
            run_source, run_label, run_start, run_n = source, text, ts, 0
        run_n += 1
        last = ts
    if run_source is not None:
        parts.append(Part(run_source, run_start, last + step, run_n, step, run_label))
    return parts


def compose(dataset: Sequence[Point], ring: Sequence[Point], since: float, span: float,
            resolution: float | None, ranges: Sequence[Range] = ()) -> tuple[list[Point], list[Part]]:
    """History points after ``since`` and their parts.

    ``dataset`` holds finished buckets (bucket starts, time-sorted, any
    density: they are grouped to :func:`step_for`), ``ring`` the Meter's
    readings. The ring adds only what lies after the last dataset bucket.
    """
    points: list[Point] = []
    parts: list[Part] = []
    ring_from = since
    if resolution is not None and dataset:
        step = step_for(span, resolution)
        grouped = group_means((p for p in dataset if p[0] >= slot(since, step)), step)
        points.extend(grouped)
        parts.extend(split_parts(grouped, step, ranges))
        ring_from = max(since, dataset[-1][0] + resolution)
    recent = [p for p in ring if p[0] >= ring_from and p[0] > since]
    if recent:
        thinned = downsample(recent, RING_MAX_POINTS)
        points.extend(thinned)
        parts.append(Part("ring", recent[0][0], recent[-1][0], len(thinned), None, RING_LABEL))
    return points, parts
