"""The household plant: load and PV per phase, every half second, deterministic per seed (pure).

Load = base per phase + uniform noise + scripted appliances (+ optionally a
Richardson stochastic household, 1-minute steps refined by the appliances'
second-level switching); PV = pvlib clear sky × cloud events. The grid is
``load − PV − Σ battery AC output`` per phase (the loop computes it).

Two independent random streams, as AstraMeter does (specs/batteries.md §2.2):
``Random(seed)`` draws the noise, ``Random(seed + 1)`` the event timeline
(±20 s jitter of each appliance, the washer's pauses, the hob's cycles), so
more or less noise never shifts the scripted events. The Richardson profile
uses ``seed`` again through richardsonpy's own generators.

Appliances (powers and rhythms from §2.2): kettle 2000 W for 3 min; oven
1500 W thermostat 240 s on / 180 s off; dishwasher 1100 W for 600 s; washer
motor 120 W pausing 3 s every 16 s (±0.5 s); hob 3000 W cycling 35–55 s on /
20–40 s off; EV 3700 W; ``step`` is a plain block of ``power`` W.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from meteremu.lab.profiles import Site, clear_sky_pv, richardson_day

RES = 0.5  # s per sample of the household arrays
EVENT_MIN_W = 250.0  # a switch at least this large is a labelled event (settle, overshoot)


@dataclass(frozen=True)
class Appliance:
    """One scripted appliance: ``kind`` starts at ``at`` (fraction of the run) on ``phase``."""

    kind: str
    at: float
    phase: int = 0
    power: float | None = None
    duration: float | None = None  # s; default per kind
    jitter: float = 20.0  # ± s per seed on the start


@dataclass(frozen=True)
class Cloud:
    """PV × ``factor`` for ``duration`` s from ``at`` (fraction of the run), ±60 s per seed."""

    at: float
    duration: float = 120.0
    factor: float = 0.2


@dataclass(frozen=True)
class HouseholdSpec:
    base: tuple[float, float, float] = (180.0, 90.0, 60.0)
    noise: float = 10.0  # ± W uniform per phase and sample
    appliances: tuple[Appliance, ...] = ()
    richardson: bool = False  # add a richardsonpy household, split 50/30/20 % over a/b/c
    occupants: int = 3
    pv_peak: float = 0.0  # W AC at 1000 W/m² on the plane
    pv_phase: int | None = 0  # None: a three-phase inverter, a third per phase
    site: Site = field(default_factory=Site)
    clouds: tuple[Cloud, ...] = ()


KINDS = {"kettle": (2000.0, 180.0), "oven": (1500.0, 1080.0), "dishwasher": (1100.0, 600.0),
         "washer": (120.0, 1200.0), "hob": (3000.0, 600.0), "ev": (3700.0, 1800.0), "step": (1000.0, 300.0)}


BIG_STEP_W = 1500.0  # W: a "big step" (the kettle's 2 kW, the hob's 3 kW) for the step-settle goal


@dataclass
class Household:
    """Load and PV per phase (W) every :data:`RES` s, and the labelled events."""

    duration: float
    load: tuple[list[float], list[float], list[float]]
    pv: tuple[list[float], list[float], list[float]]
    events: list[tuple[float, str]]  # (time, label): switches of at least EVENT_MIN_W
    big_steps: list[float] = field(default_factory=list)  # times of events of at least BIG_STEP_W
    noise: list[float] = field(default_factory=list)  # W: Σ phase noise per sample (empty: none)
    _floor: float | None = field(default=None, init=False, repr=False)

    @property
    def noise_floor(self) -> float:
        """W: p99 of |Σ phase noise|, what a perfect controller would still leave (cached)."""
        if self._floor is None:
            self._floor = _p99_abs(self.noise)
        return self._floor

    def noise_at(self, k: int) -> float:
        """The household's own noise (W, all phases) in sample ``k``: what no battery can follow."""
        return self.noise[k] if k < len(self.noise) else 0.0

    def index(self, t: float) -> int:
        return min(len(self.load[0]) - 1, max(0, int(t / RES)))

    def net(self, t: float) -> tuple[float, float, float]:
        """Load − PV per phase at ``t`` (before the batteries)."""
        k = self.index(t)
        return (self.load[0][k] - self.pv[0][k], self.load[1][k] - self.pv[1][k], self.load[2][k] - self.pv[2][k])


def _blocks(kind: str, start: float, power: float, duration: float, rng: random.Random) -> list[tuple[float, float]]:
    """The on-intervals of one appliance run."""
    end = start + duration
    if kind == "oven":
        out, t = [], start
        while t < end:
            out.append((t, min(end, t + 240.0)))
            t += 420.0
        return out
    if kind == "hob":
        out, t = [], start
        while t < end:
            on = rng.uniform(35.0, 55.0)
            out.append((t, min(end, t + on)))
            t += on + rng.uniform(20.0, 40.0)
        return out
    if kind == "washer":
        out, t = [], start
        while t < end:
            period = 16.0 + rng.uniform(-0.5, 0.5)
            out.append((t, min(end, t + period - 3.0)))
            t += period
        return out
    return [(start, end)]


def build(spec: HouseholdSpec, duration: float, seed: int) -> Household:
    """The household of ``spec`` for ``duration`` s and ``seed``."""
    n = int(duration / RES) + 1
    noise, timeline = random.Random(seed), random.Random(seed + 1)
    load = ([spec.base[0]] * n, [spec.base[1]] * n, [spec.base[2]] * n)
    edges: list[tuple[float, float, str]] = []
    for app in spec.appliances:
        power, length = KINDS[app.kind]
        power = app.power if app.power is not None else power
        length = app.duration if app.duration is not None else length
        start = max(0.0, app.at * duration + timeline.uniform(-app.jitter, app.jitter))
        for on, off in _blocks(app.kind, start, power, length, timeline):
            lo, hi = int(on / RES), min(n, int(off / RES))
            column = load[app.phase]
            for k in range(lo, hi):
                column[k] += power
            if power >= EVENT_MIN_W:
                edges.append((on, power, f"{app.kind} on"))
                if off < duration:
                    edges.append((off, -power, f"{app.kind} off"))
    if spec.richardson:
        minutes = richardson_day(seed, spec.occupants, _day_of_year(spec.site.date))
        offset = _start_seconds(spec.site.start)
        for k in range(n):
            minute = int((offset + k * RES) // 60) % 1440
            watts = minutes[minute]
            for p, part in enumerate((0.5, 0.3, 0.2)):
                load[p][k] += watts * part
    total: list[float] = []
    if spec.noise > 0:
        total = [0.0] * n
        for p in range(3):
            column = load[p]
            for k in range(n):
                draw = noise.uniform(-spec.noise, spec.noise)
                column[k] += draw
                total[k] += draw
    pv: tuple[list[float], list[float], list[float]] = ([0.0] * n, [0.0] * n, [0.0] * n)
    if spec.pv_peak > 0:
        _add_pv(spec, duration, n, timeline, pv, edges)
    edges.sort()
    events: list[tuple[float, str]] = []
    big_steps: list[float] = []
    for t, delta, label in edges:
        if not events or t - events[-1][0] > 5.0:
            events.append((t, label))
            if abs(delta) >= BIG_STEP_W:
                big_steps.append(t)
    return Household(duration, load, pv, events, big_steps, total)


def _p99_abs(values: list[float]) -> float:
    """The 99th percentile of ``|values|`` (nearest rank): the household's own noise floor.

    The settle metric's band is never narrower than this: a grid that no
    controller could hold (noise is load the meter shows before any battery
    could react) must not count as unsettled control.
    """
    ordered = sorted(abs(v) for v in values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def _add_pv(spec: HouseholdSpec, duration: float, n: int, timeline: random.Random,
            pv: tuple[list[float], list[float], list[float]], edges: list[tuple[float, float, str]]) -> None:
    step = 10.0
    coarse = clear_sky_pv(spec.site, duration, spec.pv_peak, step)
    factor = [1.0] * n
    ramp = 5.0  # s: a cloud edge is not a wall
    for cloud in spec.clouds:
        start = max(0.0, cloud.at * duration + timeline.uniform(-60.0, 60.0))
        end = start + cloud.duration
        for k in range(int(start / RES), min(n, int((end + ramp) / RES) + 1)):
            t = k * RES
            edge = min((t - start) / ramp, (end + ramp - t) / ramp, 1.0)
            factor[k] = min(factor[k], 1.0 - (1.0 - cloud.factor) * max(0.0, edge))
        watts = coarse[min(len(coarse) - 1, int(start / step))] * (1.0 - cloud.factor)
        if watts >= EVENT_MIN_W:
            edges.append((start, -watts, "cloud"))
            if end < duration:
                edges.append((end, watts, "sun"))
    phases = (0, 1, 2) if spec.pv_phase is None else (spec.pv_phase,)
    share = 1.0 / len(phases)
    for k in range(n):
        t = k * RES
        i = int(t / step)
        frac = t / step - i
        watts = (coarse[i] * (1.0 - frac) + coarse[i + 1] * frac) * factor[k] * share
        for p in phases:
            pv[p][k] = watts


def _day_of_year(date: str) -> int:
    import datetime

    return datetime.date.fromisoformat(date).timetuple().tm_yday - 1


def _start_seconds(start: str) -> float:
    hours, _, minutes = start.partition(":")
    return int(hours) * 3600.0 + int(minutes or 0) * 60.0
