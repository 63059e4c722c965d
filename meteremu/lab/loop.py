"""The closed loop, independent of the clock: plants, their integration and the trace (pure).

Both drivers use one :class:`Loop`: the simulated clock (:mod:`meteremu.lab.sim`)
and the real one (:mod:`meteremu.lab.realtime`). A driver calls
:meth:`Loop.advance` to the current run time before anything happens (a
meter sample, a poll's answer), then tells the loop what happened. The
loop integrates the plants in steps of at most :data:`DT`, keeps the energy
tallies exactly, and records a trace every :data:`RECORD` s.

Random streams: ``Random(seed)`` and ``Random(seed + 1)`` belong to the
household; ``Random(seed + 2)`` draws the network (latency, spikes, loss) and
``Random(seed + 3)`` the batteries' poll jitter, so changing one never moves
another.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from meteremu.lab.battery import Battery
from meteremu.lab.household import Household
from meteremu.lab.scenario import MeterSpec, Scenario

DT = 0.1  # s: the plants' integration step
RECORD = 0.5  # s between trace points
FIRST_POLL = 0.5  # s, then 0.131 s more per battery (AstraMeter's stagger)
STAGGER = 0.131


@dataclass
class Trace:
    """Every :data:`RECORD` s: the true grid, each battery's output and setpoint, the value it read."""

    t: list[float] = field(default_factory=list)
    grid: list[float] = field(default_factory=list)
    power: list[list[float]] = field(default_factory=list)
    setpoint: list[list[float]] = field(default_factory=list)
    served: list[list[float | None]] = field(default_factory=list)
    published: list[float | None] = field(default_factory=list)
    room_up: list[float] = field(default_factory=list)  # Σ W the batteries could still discharge more
    room_down: list[float] = field(default_factory=list)  # Σ W they could still charge more


@dataclass
class Tally:
    """Exact integrals over the run (Wh)."""

    import_wh: float = 0.0
    export_wh: float = 0.0
    avoidable_import_wh: float = 0.0
    avoidable_export_wh: float = 0.0
    steerable_import_wh: float = 0.0  # avoidable, on the grid without the household's own noise
    steerable_export_wh: float = 0.0
    load_wh: float = 0.0
    pv_wh: float = 0.0
    battery_wh: float = 0.0  # Σ AC output (discharge +)


class Loop:
    """Household + batteries for one run (see the module docstring)."""

    def __init__(self, scenario: Scenario, seed: int, household: Household) -> None:
        self.scenario, self.seed, self.household = scenario, seed, household
        self.batteries = [Battery.build(spec, i) for i, spec in enumerate(scenario.batteries)]
        self.network = random.Random(seed + 2)
        self.jitter = random.Random(seed + 3)
        self.t = 0.0
        self.tally = Tally()
        self.trace = Trace(power=[[] for _ in self.batteries], setpoint=[[] for _ in self.batteries],
                           served=[[] for _ in self.batteries])
        self.last_published: float | None = None
        self._next_record = 0.0
        self._last_delivery = 0.0

    @property
    def meter(self) -> MeterSpec:
        return self.scenario.meter

    # -- the plants ------------------------------------------------------------------
    def grid_phases(self) -> tuple[float, float, float]:
        """The true grid per phase now (W, + import)."""
        a, b, c = self.household.net(self.t)
        out = [a, b, c]
        for battery in self.batteries:
            out[battery.spec.phase] -= battery.power
        return out[0], out[1], out[2]

    def advance(self, until: float) -> None:
        """Integrate the plants up to run time ``until``."""
        while self.t < until - 1e-9:
            step = min(DT, until - self.t)
            if self._next_record <= self.t + 1e-9:
                self._record()
            self._integrate(step)
        if self._next_record <= self.t + 1e-9:
            self._record()

    def _integrate(self, dt: float) -> None:
        k = self.household.index(self.t)
        hh = self.household
        load = hh.load[0][k] + hh.load[1][k] + hh.load[2][k]
        pv = hh.pv[0][k] + hh.pv[1][k] + hh.pv[2][k]
        self.t += dt
        out = 0.0
        charge_room = discharge_room = 0.0
        for battery in self.batteries:
            battery.advance(self.t, dt)
            out += battery.power
            charge, discharge = battery.headroom()
            charge_room += charge
            discharge_room += discharge
        grid = load - pv - out
        hours = dt / 3600.0
        tally = self.tally
        tally.load_wh += load * hours
        tally.pv_wh += pv * hours
        tally.battery_wh += out * hours
        if grid > 0:
            tally.import_wh += grid * hours
            tally.avoidable_import_wh += min(grid, discharge_room) * hours
        else:
            tally.export_wh += -grid * hours
            tally.avoidable_export_wh += min(-grid, charge_room) * hours
        steered = grid - hh.noise_at(k)
        if steered > 0:
            tally.steerable_import_wh += min(steered, discharge_room) * hours
        else:
            tally.steerable_export_wh += min(-steered, charge_room) * hours

    def _record(self) -> None:
        trace = self.trace
        trace.t.append(round(self.t, 3))
        trace.grid.append(sum(self.grid_phases()))
        for i, battery in enumerate(self.batteries):
            trace.power[i].append(battery.power)
            trace.setpoint[i].append(battery.setpoint)
            trace.served[i].append(battery.served)
        trace.published.append(self.last_published)
        rooms = [b.headroom() for b in self.batteries]
        trace.room_up.append(sum(r[1] for r in rooms))
        trace.room_down.append(sum(r[0] for r in rooms))
        self._next_record += RECORD

    # -- timing draws -----------------------------------------------------------------------
    def first_poll(self, index: int) -> float:
        return FIRST_POLL + index * STAGGER

    def next_poll(self, battery: Battery, now: float) -> float:
        spec = battery.spec
        assert spec.cadence is not None
        return now + max(0.05, spec.cadence + self.jitter.uniform(-spec.jitter, spec.jitter))

    def sample_times(self) -> list[float]:
        """When the meter samples the grid and publishes (outages left out)."""
        meter, duration = self.meter, self.scenario.duration
        windows = [(start * duration, start * duration + length) for start, length in meter.outages]
        out, t = [], meter.interval / 2
        while t < duration:
            if not any(lo <= t < hi for lo, hi in windows):
                out.append(t)
            t += meter.interval
        return out

    def delivery(self, sampled: float) -> float:
        """When a sample taken at ``sampled`` reaches meteremu (in order)."""
        lo, hi = self.meter.latency
        at = sampled + self.network.uniform(lo, hi)
        if self.meter.spikes and self.network.random() < self.meter.spikes:
            at += self.meter.spike_delay
        at = max(at, self._last_delivery)
        self._last_delivery = at
        return at

    def lost(self) -> bool:
        return bool(self.meter.loss) and self.network.random() < self.meter.loss
