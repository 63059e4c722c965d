"""Simulator source: a plausible three-phase household, the embedded default.

Why a model rather than random numbers: batteries, dashboards and the stale
policy all need to be *seen* working (import at night, export at noon, big
appliance steps, silence), on demand and reproducibly. So the model is a pure
function of ``(options, tz, t)``: appliance schedules are drawn per local day
from ``random.Random(f"{seed}:{day}")`` and per-second noise from
``random.Random(f"{seed}:n:{second}")``, so any instant can be computed
directly, in any order, and the same seed always gives the same house.

Time of day: the Household reads wall-clock time in ``tz``; ``tz=None`` means
the process's local time zone (honouring ``TZ``), so ``start_time: "12:00"``
is noon where the user is. Tests pass an explicit ``tz`` to be deterministic.

Timing: ``interval`` and outages are *real* seconds on the injected clock; each
reading carries the *simulated* clock's timestamp, which runs ``speed`` times
faster than real time from ``start_time``.

Backfill: because the household is a pure function of time, ``backfill: 14d``
offers the Meter the same household over the 14 days before the simulated
clock's start (:class:`meteremu.past.Past`, labelled as simulated). The
forecast dataset writes it to the store at start, so a first run already has
a history to chart and to train on. Only this source can do that: a real
meter's past is never made up.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, time, tzinfo

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from meteremu.clocks import wall
from meteremu.configtypes import Duration
from meteremu.interfaces import IReactorTime, StateStore
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.past import Past
from meteremu.reading import PhaseReading, Reading

DAY = 86400.0
HOUR = 3600.0
SUNRISE, SUNSET = 6 * HOUR, 20 * HOUR  # solar noon (their middle) at 13:00, as under DST
BASE_SPLIT = (0.45, 0.32, 0.23)  # not equal thirds: phase detection needs asymmetry
MAX_BACKFILL = 366 * DAY
BACKFILL_LABEL = "simulated: the simulator's household computed for the past (backfill), not measured"


@dataclass(frozen=True)
class OutageOptions:
    every: Duration = field(metadata={"doc": "real time between the starts of two outages"})
    duration: Duration = field(metadata={"doc": "real time the source stays silent"})


@dataclass(frozen=True)
class SimulatorOptions:
    interval: Duration = field(default=1.0, metadata={"doc": "real time between readings"})
    seed: int = field(default=1, metadata={"doc": "same seed, same household"})
    start_time: str | None = field(default=None, metadata={
        "doc": 'simulated clock start: "HH:MM", "HH:MM:SS" (today) or ISO datetime; default now'})
    speed: float = field(default=1.0, metadata={"doc": "simulated seconds per real second"})
    base_load: float = field(default=250.0, metadata={"doc": "always-on load of the house in W"})
    pv_peak: float = field(default=4000.0, metadata={"doc": "PV output at solar noon in W (0: none)"})
    outages: OutageOptions | None = field(default=None, metadata={
        "doc": "periodic silence of the source: {every, duration}"})
    backfill: Duration | None = field(default=None, metadata={
        "doc": "history to compute for the past at start, e.g. 14d (written to the forecast dataset)"})

    def validate(self) -> list[tuple[str, str]]:
        """Semantic checks the type-driven config loader cannot make."""
        errors: list[tuple[str, str]] = []
        if not self.interval > 0:
            errors.append(("interval", "a duration greater than 0"))
        if not (self.speed > 0 and math.isfinite(self.speed)):
            errors.append(("speed", "a number greater than 0"))
        if not self.base_load >= 0:
            errors.append(("base_load", "watts, 0 or more"))
        if not self.pv_peak >= 0:
            errors.append(("pv_peak", "watts, 0 or more"))
        try:
            parse_start_time(self.start_time, 0.0)
        except ValueError:
            errors.append(("start_time", '"HH:MM", "HH:MM:SS" or an ISO-8601 datetime'))
        if self.backfill is not None and not 0 < self.backfill <= MAX_BACKFILL:
            errors.append(("backfill", "a duration above 0 and at most 366d, e.g. 14d"))
        if self.outages is not None:
            if not self.outages.every > 0:
                errors.append(("outages.every", "a duration greater than 0"))
            if not 0 < self.outages.duration < self.outages.every:
                errors.append(("outages.duration", "a duration greater than 0 and less than every"))
        return errors


def parse_start_time(value: str | None, now: float, tz: tzinfo | None = None) -> float:
    """Epoch seconds where the simulated clock starts; raise ValueError if unparseable.

    ``None`` is ``now``. A bare time of day is on ``now``'s date in ``tz``
    (``None``: local time); a naive ISO datetime is read in ``tz`` too.
    """
    if value is None:
        return float(now)
    if not isinstance(value, str):  # e.g. YAML read an unquoted 12:00 as the number 720
        raise ValueError(f"not a string: {value!r}")
    text = value.strip()
    if len(text) <= 8 and ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(p.isdigit() and len(p) == 2 for p in parts):
            raise ValueError(f"not a time of day: {value!r}")
        numbers = [int(p) for p in parts] + [0]
        clock_time = time(numbers[0], numbers[1], numbers[2])  # range-checks hours/minutes/seconds
        today = datetime.fromtimestamp(now, tz).date()
        return datetime.combine(today, clock_time, tz).timestamp()
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None and tz is not None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class _Event:
    """One appliance run: ``watts`` per phase between two seconds of the local day."""

    start: float
    end: float
    watts: tuple[float, float, float]  # per phase
    pf: float
    ramp: float = 0.0  # soft start (heat pump inverter) over this many seconds


_Watts = tuple[float, float, float]
_Sky = tuple[tuple[float, float, float], ...]  # (start, end, depth) cloud passes
_Schedule = tuple[tuple[_Event, ...], _Sky]


def _spread(watts: float, phases: tuple[int, ...]) -> _Watts:
    share = watts / len(phases)
    a, b, c = (share if i in phases else 0.0 for i in range(3))
    return a, b, c


def _bump(s: float, centre_h: float, width_h: float) -> float:
    """Gaussian bump of household activity around a time of day."""
    return math.exp(-(((s / HOUR) - centre_h) / width_h) ** 2)


class Household:
    """Pure, deterministic model: no clock, no reactor."""

    def __init__(self, options: SimulatorOptions, tz: tzinfo | None = None) -> None:
        self.options = options
        self.tz = tz
        self._days: dict[int, _Schedule] = {}
        rng = random.Random(f"{options.seed}:house")
        self._fridge = (rng.uniform(2400, 3600), rng.uniform(0.3, 0.4), rng.uniform(0, DAY),
                        rng.uniform(90, 130))
        self._phase_shift = rng.uniform(0, 2 * math.pi)

    # -- schedules -------------------------------------------------------
    def _day(self, day: int) -> _Schedule:
        """Appliance runs and cloud passes of one local day; cached, but pure."""
        if day not in self._days:
            if len(self._days) > 8:
                self._days.clear()
            self._days[day] = self._make_day(random.Random(f"{self.options.seed}:{day}"))
        return self._days[day]

    @staticmethod
    def _make_day(rng: random.Random) -> _Schedule:
        events: list[_Event] = []
        kettle_phase = rng.randrange(3)  # the kettle lives on one socket circuit
        for lo, hi, count in ((6.5, 9.0, rng.randint(1, 3)), (15.0, 21.5, rng.randint(1, 2))):
            for _ in range(count):
                start = rng.uniform(lo, hi) * HOUR
                events.append(_Event(start, start + rng.uniform(150, 240),
                                     _spread(rng.uniform(2000, 2200), (kettle_phase,)), 1.0))
        if rng.random() < 0.7:  # oven: thermostat cycles on one or two phases
            watts = _spread(rng.uniform(2000, 3000), tuple(rng.sample(range(3), rng.randint(1, 2))))
            t = rng.uniform(17.0, 19.5) * HOUR
            stop = t + rng.uniform(30, 75) * 60
            first = True
            while t < stop:
                on = rng.uniform(600, 900) if first else rng.uniform(60, 180)
                events.append(_Event(t, min(t + on, stop), watts, 0.99))
                t += on + rng.uniform(60, 150)
                first = False
        if rng.random() < 0.5:  # washing machine: heat the water, then tumble and spin
            start = rng.choice((rng.uniform(8.0, 10.5), rng.uniform(14.0, 18.0))) * HOUR
            heat_end = start + rng.uniform(900, 1200)  # on phase C, the utility-room circuit
            events.append(_Event(start, heat_end, _spread(2000.0, (2,)), 1.0))
            events.append(_Event(heat_end, heat_end + 3000, _spread(300.0, (2,)), 0.85))
            events.append(_Event(heat_end + 3000, heat_end + 3600, _spread(550.0, (2,)), 0.88))
        t = rng.uniform(0, 1800)  # heat pump: longer duty in the cold early morning
        while t < DAY:
            duty = 0.2 + 0.35 * (1 + math.cos(2 * math.pi * (t / HOUR - 5) / 24)) / 2
            on = rng.uniform(12, 30) * 60
            events.append(_Event(t, t + on, _spread(rng.uniform(1000, 2000), (0, 1, 2)), 0.96, 120))
            t += on + on * (1 - duty) / duty * rng.uniform(0.8, 1.2)
        sky = [(rng.uniform(0.8, 1.0), 0.0, 0.0)]  # whole-day haze first, then cloud passes
        for _ in range(rng.randint(0, 6)):
            start = rng.uniform(SUNRISE, SUNSET)
            sky.append((start, start + rng.uniform(120, 900), rng.uniform(0.15, 0.45)))
        return tuple(events), tuple(sky)

    # -- the model -------------------------------------------------------
    def _local(self, t: float) -> tuple[int, float]:
        moment = datetime.fromtimestamp(t, self.tz)
        second = moment.hour * HOUR + moment.minute * 60 + moment.second + moment.microsecond / 1e6
        return moment.date().toordinal(), second

    def pv_power(self, t: float) -> float:
        """Total PV output in W at simulated time ``t`` (bell curve with cloud dips)."""
        day, s = self._local(t)
        if self.options.pv_peak <= 0 or not SUNRISE < s < SUNSET:
            return 0.0
        shape = math.sin(math.pi * (s - SUNRISE) / (SUNSET - SUNRISE)) ** 1.5
        (clearness, _, _), *clouds = self._day(day)[1]
        factor = clearness
        for start, end, depth in clouds:
            if start <= s < end:  # soft edges so a cloud does not look like a relay
                factor *= 1 - depth * min(1.0, (s - start) / 60, (end - s) / 60)
        return self.options.pv_peak * shape * factor

    def reading_at(self, t: float) -> Reading:
        """Grid reading at simulated epoch ``t``: loads minus PV, per phase."""
        opts = self.options
        day, s = self._local(t)
        noise = random.Random(f"{opts.seed}:n:{math.floor(t)}")
        p = [0.0, 0.0, 0.0]
        q = [0.0, 0.0, 0.0]

        def add(phase: int, watts: float, pf: float) -> None:
            p[phase] += watts
            q[phase] += watts * math.tan(math.acos(pf))

        wobble = 1 + 0.05 * math.sin(2 * math.pi * t / 1700 + self._phase_shift)
        activity = 150 * _bump(s, 7.5, 1.0) + 300 * _bump(s, 20.5, 1.8)  # lights, TV, cooking
        for i in range(3):
            add(i, opts.base_load * BASE_SPLIT[i] * wobble, 0.9)
            add(i, activity * BASE_SPLIT[i], 0.95)
        period, duty, offset, fridge_w = self._fridge
        if ((t + offset) % period) < duty * period:
            add(1, fridge_w, 0.85)
        for events, shift in ((self._day(day - 1)[0], -DAY), (self._day(day)[0], 0.0)):
            for ev in events:
                local = s - shift
                if ev.start <= local < ev.end:
                    ramp = min(1.0, 0.3 + 0.7 * (local - ev.start) / ev.ramp) if ev.ramp else 1.0
                    for i in range(3):
                        if ev.watts[i]:
                            add(i, ev.watts[i] * ramp, ev.pf)
        pv_each = self.pv_power(t) * noise.uniform(0.99, 1.01) / 3  # three-phase inverter
        pv_lift = 2.0 * pv_each / max(opts.pv_peak / 3, 1.0)  # PV all around raises the grid
        freq = 50 + 0.02 * math.sin(2 * math.pi * t / 600 + self._phase_shift)
        freq = min(50.05, max(49.95, freq + 0.01 * math.sin(2 * math.pi * t / 97)
                              + noise.gauss(0, 0.004)))
        phases = []
        for i in range(3):
            jitter = noise.uniform(0.985, 1.015)
            active = p[i] * jitter - pv_each
            reactive = q[i] * jitter
            volts = 230 + (0.8, -0.5, 0.3)[i] + 1.5 * math.sin(2 * math.pi * s / DAY * 2)
            volts += pv_lift - 0.2 * active / 230 + noise.gauss(0, 0.25)
            volts = min(239.0, max(221.0, volts))
            aprt = math.hypot(active, reactive)
            pf = active / aprt if aprt else 0.0
            phases.append(PhaseReading(voltage=volts, current=aprt / volts, act_power=active,
                                       aprt_power=aprt, pf=pf, freq=freq))
        return Reading(phases=tuple(phases), measured_at=t,
                       extras={"pv_power": pv_each * 3, "load_power": sum(p)})

    def power_at(self, t: float) -> tuple[float, float, float, float]:
        """Total and per-phase active power at ``t``: the values a backfill records."""
        reading = self.reading_at(t)
        a, b, c = (reading.phase(i).act_power for i in range(3))
        return reading.total_act_power, a, b, c


class SimulatorSource(Service):
    """Feeds a Meter from a Household every ``interval`` real seconds."""

    type_name = "simulator"
    log = logger(__name__)

    def __init__(self, meter: Meter, options: SimulatorOptions, clock: IReactorTime,
                 tz: tzinfo | None = None) -> None:
        self.meter = meter
        self.options = options
        self.clock = clock
        self.tz = tz
        self.household = Household(options, tz)
        self.real_start = 0.0
        self.sim_start = 0.0
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self.real_start = self.clock.seconds()
        self.sim_start = parse_start_time(self.options.start_time, wall(self.clock), self.tz)
        if self.options.backfill is not None:
            self.meter.offer_past(Past(self.sim_start - self.options.backfill, self.sim_start,
                                       self.household.power_at, BACKFILL_LABEL))
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.options.interval, now=True).addErrback(
            lambda f: self.log.failure("simulator loop stopped", f))

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def sim_time(self) -> float:
        """The simulated clock now: it runs ``speed`` times faster than the real one."""
        return self.sim_start + (self.clock.seconds() - self.real_start) * self.options.speed

    def in_outage(self) -> bool:
        """Outages start ``every``, 2×``every``, … real seconds after start, last ``duration``."""
        outages = self.options.outages
        if outages is None:
            return False
        elapsed = self.clock.seconds() - self.real_start
        k = math.floor((elapsed + 1e-9) / outages.every)
        return k >= 1 and elapsed - k * outages.every < outages.duration - 1e-9

    def _tick(self) -> None:
        # Never let an exception escape: it would kill the LoopingCall for good.
        try:
            if self.in_outage():
                return  # silence: the Meter goes stale by itself
            self.meter.update(self.household.reading_at(self.sim_time()))
        except Exception as exc:
            self.log.failure("simulator tick failed")
            self.meter.report_failure(f"{type(exc).__name__}: {exc}", down=False)


# -- registry hooks (meteremu.sources) ----------------------------------------------

Options = SimulatorOptions


def make_source(meter: Meter, options: SimulatorOptions, reactor: IReactorTime,
                store: StateStore | None = None) -> SimulatorSource:
    """Build the source service for the registry in ``meteremu.sources``."""
    return SimulatorSource(meter, options, reactor)
