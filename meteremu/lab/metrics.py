"""What a run scores (pure): step response, hunting, tracking, energy, money, effort, balance.

Definitions follow AstraMeter's evaluator (specs/batteries.md §2.4) where it
has one, with these differences, each on purpose:

* the time series is the true grid every 0.5 s (not one sample per poll);
  energies are the exact integrals of the plant (0.1 s steps);
* an event that never settles enters the settle times as its whole window
  (censored), not only into the unsettled count; and a grid the batteries
  cannot reach (saturated: no headroom in the needed direction) counts as
  settled, so settle times measure the control, not the battery's size;
* *avoidable* import/export counts only the part a battery could have
  covered: ``min(|grid|, Σ headroom)`` (AstraMeter counts the whole import
  while any battery has headroom);
* the oracle has the batteries' losses (round-trip efficiency, standby) and
  limits, not a lossless aggregate; like AstraMeter's, it gives no credit for
  energy left in the batteries at the end (covering the house now is the
  job; a scenario that wants SoC kept says so with its own limits);
* *steerable* import/export and *hunting* are the avoidable energy and the
  band crossings of the grid without the household's own sub-second noise
  (the lab knows it exactly). No battery can follow noise that the meter
  shows before anyone could react: on the ±150 W house a perfect controller
  (putting out the noiseless load exactly) leaves some 30 Wh of avoidable
  import per half hour and thousands of crossings per hour, more than one
  that holds the grid 50 W off zero, so the raw figures reward the wrong
  thing there. Without the noise the perfect controller scores 0, and a
  battery that chases the noise still shows (its moves are not noise);
* share imbalance compares each battery with its share of the total by its
  power limit (equal batteries: equal shares).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from meteremu.lab.loop import RECORD, Loop

SETTLE_BAND = 25.0  # W
SETTLE_HOLD = 10.0  # s
SETTLE_WINDOW = 600.0  # s
HUNT_BAND = 20.0  # W hysteresis of a band crossing
STEADY_SKIP = 120.0  # s after an event left out of the steady-state RMS
IMPORT_CT = 30.0  # ct/kWh
EXPORT_CT = 8.0  # ct/kWh

# Every metric, and whether lower is better (all are, except none): compare uses it.
METRICS: dict[str, str] = {
    "settle_mean_s": "s", "settle_p95_s": "s", "big_step_settle_s": "s", "unsettled_events": "",
    "overshoot_mean_w": "W", "overshoot_max_w": "W",
    "band_crossings_per_h": "/h", "grid_rms_w": "W", "steady_rms_w": "W", "grid_p2p_w": "W",
    "mean_abs_grid_w": "W", "import_wh": "Wh", "export_wh": "Wh",
    "avoidable_import_wh": "Wh", "avoidable_export_wh": "Wh",
    "steerable_import_wh": "Wh", "steerable_export_wh": "Wh", "hunting_per_h": "/h",
    "grid_cost_ct": "ct", "oracle_cost_ct": "ct", "cost_regret_ct": "ct",
    "battery_travel_w_per_h": "W/h", "share_imbalance_w": "W",
}
# Not scores of the regulation: compare shows them but never flags them.
NEUTRAL = frozenset({"oracle_cost_ct", "export_wh"})


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


SATURATED = 5.0  # W: less headroom than this in the needed direction is saturation


def step_responses(t: Sequence[float], grid: Sequence[float], events: Sequence[float],
                   end: float, room_up: Sequence[float] | None = None,
                   room_down: Sequence[float] | None = None,
                   band: float = SETTLE_BAND) -> tuple[list[float], list[float], int]:
    """``(settle times, overshoots, unsettled)`` of the labelled events.

    Settle: seconds from the event until the grid stays *settled* for 10 s
    -- under ``band`` (25 W, or the household's own noise floor when that is
    larger: :func:`settle_band`), or the batteries saturated in the direction the grid asks
    (importing while none can discharge more, exporting while none can charge
    more: what no control law could fix) -- within 600 s or until the next
    event; an event that never settles counts
    as its whole window (and as unsettled), so hunting can never score a
    better settle time than settling. Events whose grid right after (the
    largest |grid| in the first 2 s) is under ``band`` are skipped.
    Overshoot: the largest excursion opposite to that first error.
    """
    settles: list[float] = []
    overshoots: list[float] = []
    unsettled = 0
    for n, start in enumerate(events):
        stop = min(start + SETTLE_WINDOW, events[n + 1] if n + 1 < len(events) else end, end)
        lo = _index(t, start)
        hi = _index(t, stop)
        if hi - lo < 4:
            continue
        first = max(grid[lo:_index(t, start + 2.0) + 1], key=abs)
        if abs(first) < band:
            continue
        sign = 1.0 if first > 0 else -1.0
        overshoots.append(max(0.0, max(-sign * g for g in grid[lo:hi])))
        inside_since: float | None = None
        settled: float | None = None
        for k in range(lo, hi):
            g = grid[k]
            saturated = ((room_up is not None and g > 0 and room_up[k] < SATURATED)
                         or (room_down is not None and g < 0 and room_down[k] < SATURATED))
            if abs(g) < band or saturated:
                if inside_since is None:
                    inside_since = t[k]
                if t[k] - inside_since >= SETTLE_HOLD:
                    settled = inside_since - start
                    break
            else:
                inside_since = None
        if settled is None:
            unsettled += 1
            settled = stop - start  # censored: counted as the whole window, never as 0
        settles.append(settled)
    return settles, overshoots, unsettled


def settle_band(noise_floor: float) -> float:
    """The settle band: 25 W, or the household's own noise floor when that is larger.

    The floor is the p99 of |Σ phase noise| (:class:`~meteremu.lab.household.Household`):
    what the grid shows with a *perfect* controller, one that puts out the
    noiseless load exactly. With ±10 W per phase it is about 24 W, so the
    band stays 25 W; with ±150 W (the noisy scenarios) about 360 W, where a
    25 W band was unreachable by any controller and every event censored
    (159 s in every mode). The same band applies to every mode.
    """
    return max(SETTLE_BAND, noise_floor)


def _index(t: Sequence[float], when: float) -> int:
    """The trace point at or before ``when`` (the household switches at the same floor)."""
    k = int(when / RECORD)
    return min(max(k, 0), len(t))


def band_crossings(grid: Sequence[float], band: float = HUNT_BAND) -> int:
    """Sign flips of the grid across a ±band hysteresis."""
    state = 0
    flips = 0
    for g in grid:
        new = 1 if g > band else -1 if g < -band else state
        if state and new != state:
            flips += 1
        state = new
    return flips


def step_times(t: Sequence[float], grid: Sequence[float], events: Sequence[float], end: float,
               room_up: Sequence[float] | None = None, room_down: Sequence[float] | None = None,
               band: float = SETTLE_BAND) -> list[tuple[float, float]]:
    """``(event time, settle time)`` of each event :func:`step_responses` scores (same windows)."""
    out = []
    for n, start in enumerate(events):
        stop = events[n + 1] if n + 1 < len(events) else end
        settles, _, _ = step_responses(t, grid, [start], min(end, stop), room_up, room_down, band)
        if settles:
            out.append((start, settles[0]))
    return out


def steered(loop: Loop) -> list[float]:
    """The trace's grid without the household's own noise: what control could have changed."""
    hh = loop.household
    return [g - hh.noise_at(hh.index(t)) for t, g in zip(loop.trace.t, loop.trace.grid, strict=True)]


def steady_mask(t: Sequence[float], events: Sequence[float]) -> list[bool]:
    """True for trace points not within 120 s after an event."""
    mask = [True] * len(t)
    for start in events:
        for k in range(_index(t, start), _index(t, start + STEADY_SKIP)):
            mask[k] = False
    return mask


def rms(values: Sequence[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else 0.0


def oracle_cost(loop: Loop) -> float:
    """The grid cost (ct) of a perfect-foresight battery with the real ones' limits and losses.

    One aggregate battery, greedy on the household's net load (optimal under
    a flat tariff: every kWh stored from surplus saves more than it earns
    exported, 30·η > 8): discharge to cover import, charge from export, each
    within the AC-chargeable batteries' limits, their SoC windows, the
    round-trip losses and the standby draw.
    """
    hh, batteries = loop.household, loop.batteries
    eff = [math.sqrt(b.spec.efficiency) for b in batteries]
    soc = [b.spec.soc * b.capacity for b in batteries]
    lo = [b.spec.soc_min * b.capacity for b in batteries]
    hi = [b.spec.soc_max * b.capacity for b in batteries]
    dt = hh.duration / max(1, len(hh.load[0]) - 1)
    hours = dt / 3600.0
    imp = exp = 0.0
    n = int(loop.scenario.duration / dt)
    for k in range(n):
        net = (hh.load[0][k] + hh.load[1][k] + hh.load[2][k]) - (hh.pv[0][k] + hh.pv[1][k] + hh.pv[2][k])
        for i, battery in enumerate(batteries):
            spec = battery.spec
            assert spec.max_charge is not None and spec.max_discharge is not None
            soc[i] = max(0.0, soc[i] - spec.standby * hours)
            if net > 0 and soc[i] > lo[i]:
                p = min(net, spec.max_discharge, (soc[i] - lo[i]) * eff[i] / hours)
                soc[i] -= p / eff[i] * hours
                net -= p
            elif net < 0 and spec.ac_charge and soc[i] < hi[i]:
                p = min(-net, spec.max_charge, (hi[i] - soc[i]) / eff[i] / hours)
                soc[i] += p * eff[i] * hours
                net += p
        if net > 0:
            imp += net * hours
        else:
            exp -= net * hours
    return (imp * IMPORT_CT - exp * EXPORT_CT) / 1000.0


def score(loop: Loop) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one finished run."""
    trace, tally, duration = loop.trace, loop.tally, loop.scenario.duration
    t, grid = trace.t, trace.grid
    events = [when for when, _label in loop.household.events]
    band = settle_band(loop.household.noise_floor)
    settles, overshoots, unsettled = step_responses(t, grid, events, duration, trace.room_up, trace.room_down, band)
    big = set(loop.household.big_steps)
    timed = step_times(t, grid, events, duration, trace.room_up, trace.room_down, band)
    big_settles = [s for when, s in timed if when in big]
    mask = steady_mask(t, events)
    hours = duration / 3600.0
    batteries = loop.batteries
    grid_cost = (tally.import_wh * IMPORT_CT - tally.export_wh * EXPORT_CT) / 1000.0
    oracle = oracle_cost(loop)
    return {
        "settle_mean_s": sum(settles) / len(settles) if settles else 0.0,
        "settle_p95_s": percentile(settles, 95) if settles else 0.0,
        "big_step_settle_s": percentile(big_settles, 95) if big_settles else 0.0,
        "unsettled_events": float(unsettled),
        "overshoot_mean_w": sum(overshoots) / len(overshoots) if overshoots else 0.0,
        "overshoot_max_w": max(overshoots, default=0.0),
        "band_crossings_per_h": band_crossings(grid) / hours,
        "grid_rms_w": rms(grid),
        "steady_rms_w": rms([g for g, keep in zip(grid, mask, strict=True) if keep]),
        "grid_p2p_w": percentile(grid, 95) - percentile(grid, 5),
        "mean_abs_grid_w": sum(abs(g) for g in grid) / len(grid) if grid else 0.0,
        "import_wh": tally.import_wh,
        "export_wh": tally.export_wh,
        "avoidable_import_wh": tally.avoidable_import_wh,
        "avoidable_export_wh": tally.avoidable_export_wh,
        "steerable_import_wh": tally.steerable_import_wh,
        "steerable_export_wh": tally.steerable_export_wh,
        "hunting_per_h": band_crossings(steered(loop)) / hours,
        "grid_cost_ct": grid_cost,
        "oracle_cost_ct": oracle,
        "cost_regret_ct": max(0.0, grid_cost - oracle),
        "battery_travel_w_per_h": sum(b.travel for b in batteries) / hours,
        "share_imbalance_w": share_imbalance(loop),
    }


def share_imbalance(loop: Loop) -> float:
    """Time mean of Σ|p_i − fair_i|, fair_i = Σp · limit_i / Σlimit (0 with one battery)."""
    batteries = loop.batteries
    if len(batteries) < 2:
        return 0.0
    powers = loop.trace.power
    total = 0.0
    count = len(loop.trace.t)
    for k in range(count):
        ps = [powers[i][k] for i in range(len(batteries))]
        s = sum(ps)
        limits = [(b.spec.max_discharge if s >= 0 else b.spec.max_charge) or 0.0 for b in batteries]
        room = sum(limits)
        if room <= 0:
            continue
        total += sum(abs(p - s * lim / room) for p, lim in zip(ps, limits, strict=True))
    return total / count if count else 0.0


def run_summary(loop: Loop) -> dict[str, Any]:
    """What a run reports besides its metrics: polls, answers, final SoC."""
    return {"batteries": [{"model": b.spec.model, "ip": b.ip, "transport": b.spec.transport,
                           "polls": b.polls, "answers": b.answers, "soc_end": round(b.soc, 4)}
                          for b in loop.batteries]}
