"""Does the settle metric measure control, or the household's own noise?

For one scenario and mode, on the simulated clock, this prints each seed's
big-step settle times (the steps of ``BIG_STEP_W`` or more, scored exactly as
``meteremu-lab`` scores them) next to a *perfect* controller's on the same
household: one that puts out the noiseless load exactly, so the grid it
leaves is the household's own noise (plus the step itself for its first
second, so that the event is seen). Then the p95 over every big step of
every seed, for both. A perfect controller far under the mode says the
metric is reachable and the gap is control; a perfect controller that does
not settle says the band is under the noise (docs/control.md, "Metrics").

Usage: PYTHONPATH=. python scripts/lab_perfect.py SCENARIO MODE [SEEDS]
"""

from __future__ import annotations

import dataclasses
import sys

from meteremu.lab import catalogue
from meteremu.lab.household import RES, build
from meteremu.lab.metrics import percentile, settle_band, step_times
from meteremu.lab.runner import setup_for
from meteremu.lab.sim import Simulation


def main(argv: list[str]) -> int:
    name, mode = argv[0], argv[1]
    seeds = int(argv[2]) if len(argv) > 2 else 10
    scenario = catalogue.get(name)
    pooled_mode: list[float] = []
    pooled_perfect: list[float] = []
    for seed in range(seeds):
        loop = Simulation(scenario, seed, setup_for(scenario, mode)).run()
        household, trace = loop.household, loop.trace
        band = settle_band(household.noise_floor)
        quiet = build(dataclasses.replace(scenario.household, noise=0.0), scenario.duration, seed)
        perfect = [sum(household.load[p][household.index(t)] - quiet.load[p][household.index(t)] for p in range(3))
                   for t in trace.t]
        events = [when for when, _ in household.events]
        for when in events:  # the step itself, for its first second
            for k in range(int(when / RES), min(len(perfect), int(when / RES) + 2)):
                perfect[k] += 3000.0
        big = set(household.big_steps)
        got = [s for w, s in step_times(trace.t, trace.grid, events, scenario.duration, trace.room_up,
                                        trace.room_down, band) if w in big]
        ideal = [s for w, s in step_times(trace.t, perfect, events, scenario.duration, band=band) if w in big]
        pooled_mode += got
        pooled_perfect += ideal
        print(f"seed {seed} band {band:.1f} W  {mode}: {[round(s, 1) for s in got]}  perfect: "
              f"{[round(s, 1) for s in ideal]}")
    if pooled_mode:
        print(f"p95 over all big steps: {mode} {percentile(pooled_mode, 95):.1f} s, "
              f"perfect {percentile(pooled_perfect, 95):.1f} s ({len(pooled_mode)} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
