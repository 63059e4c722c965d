"""``meteremu-lab compare A B``: per-metric deltas with intervals, regressions flagged (pure).

For every scenario in both files and every metric: the mean of ``B − A``
over the seeds both ran, with its 95 % paired bootstrap interval (the same
seeds saw the same households, so pairing removes the household's own
variance). A delta whose whole interval lies above 0 is a regression
(every metric is lower-is-better), below 0 an improvement; otherwise the
two are not told apart by these seeds. Metrics that are not scores of the
regulation (the oracle's cost, export) are shown but never flagged, and a
delta smaller than ``MIN_EFFECT`` (1 %) of A's value is not flagged either:
with paired seeds even a 0.01 Wh timing difference can be "significant",
and a verdict should mean something to a battery owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meteremu.lab.metrics import METRICS, NEUTRAL
from meteremu.lab.stats import paired

SMALL = 1e-6  # deltas this small are noise of the float formatting, not a change
MIN_EFFECT = 0.01  # a flagged delta is at least this fraction of A's value


@dataclass(frozen=True)
class Delta:
    scenario: str
    metric: str
    base: float
    head: float
    mean: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if self.metric in NEUTRAL or abs(self.mean) < max(SMALL, MIN_EFFECT * abs(self.base)):
            return ""
        if self.low > SMALL:
            return "REGRESSION"
        if self.high < -SMALL:
            return "better"
        return ""


def compare(base: dict[str, Any], head: dict[str, Any]) -> list[Delta]:
    out: list[Delta] = []
    for name, b_entry in base["results"].items():
        h_entry = head["results"].get(name)
        if h_entry is None:
            continue
        b_runs = {r["seed"]: r["metrics"] for r in b_entry["runs"]}
        h_runs = {r["seed"]: r["metrics"] for r in h_entry["runs"]}
        seeds = sorted(set(b_runs) & set(h_runs))
        if not seeds:
            continue
        for metric in METRICS:
            if any(metric not in b_runs[s] or metric not in h_runs[s] for s in seeds):
                continue  # a results file from before the metric existed
            bs = [b_runs[s][metric] for s in seeds]
            hs = [h_runs[s][metric] for s in seeds]
            mean, low, high = paired(bs, hs)
            out.append(Delta(name, metric, sum(bs) / len(bs), sum(hs) / len(hs), mean, low, high))
    return out


def format_table(deltas: list[Delta], only_changes: bool = False) -> str:
    lines = [f"{'scenario':24} {'metric':22} {'A':>10} {'B':>10} {'B−A':>10} {'95% interval':>22}  verdict"]
    for d in deltas:
        if only_changes and not d.verdict:
            continue
        interval = f"[{d.low:.2f}, {d.high:.2f}]"
        lines.append(f"{d.scenario:24} {d.metric:22} {d.base:10.2f} {d.head:10.2f} {d.mean:10.2f} "
                     f"{interval:>22}  {d.verdict}")
    regressions = sum(1 for d in deltas if d.verdict == "REGRESSION")
    better = sum(1 for d in deltas if d.verdict == "better")
    lines.append(f"{regressions} regressions, {better} improvements beyond their intervals "
                 f"({len(deltas)} scenario-metric pairs)")
    return "\n".join(lines)
