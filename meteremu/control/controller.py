"""Active control: one controller per meter gives each battery its own value (pure, clock injected).

Several batteries that each integrate the full grid value overshoot and
hunt; a static ÷N split lets one battery fill another (specs/batteries.md
§5). The controller closes the error once, between all of them, and waits
for the grid to show the result before it moves anyone again.

Two kinds of battery, one controller:

* **reporting** (Marstek CT002/CT003: every request carries the battery's
  own AC power). The controller keeps a *target output* per battery. When a
  reading arrives and every output has been steady for ``settle`` seconds
  (so the reading reflects them), the wanted total is
  ``Σ reported + (grid − target)``; it is shared by weight within each
  battery's envelope (:func:`~meteremu.control.allocate.allocate`). A
  battery then gets ``target − reported`` once (:meth:`Controller.serve`
  says whether the value is new, so the device can change ``info_idx`` and
  the battery acts on it once), and zero until it is steady again and
  ``pace`` has passed (its firmware regulates at most every ~3 s). A
  battery told to move that does not move (twice) is taken as full or
  empty in that direction for ``saturation_hold``; its envelope shrinks to
  where it stands and the next allocation hands its share to the others.
* **silent** (the Shelly path: a battery only polls). It is served its
  weight's share of the current error on every poll, like ``divide`` but
  with weights, a deadband (nothing on noise), small errors folded onto one
  battery (``min_step``), and a hand-off gain: when the error does not
  shrink over ``response_time`` (someone is full or empty), the shares grow
  up to the whole error, so the batteries that can still move close it.

After a step the reporting batteries close the error of one reading, which
is that reading's household noise off (±30 W on a ±10 W house): a leftover
inside the deadband that, with the noise on top, keeps the grid out of a
±25 W band for long. For ``trim_window`` after a step the controller
*trims*: every quiet reading is a sample of the load, and once their mean is
confidently away from what the batteries put out, the battery that polls
most often closes the difference in a move its firmware carries out exactly
(:meth:`Controller._trim_due`), or two batteries in opposite moves when one
alone would miss it by its deadband. A rebalance (net zero) moves only the
batteries that must rise; the others follow once the grid shows it.

On a noisy house (the noise σ, learnt from the load's jumps between quiet
readings, hides a deadband-sized error in ``average`` readings: ±150 W
per phase, not ±10 W) the same rules would take every fourth reading for an
error. There a small error must stand :data:`NOISY_Z` standard errors out
in 8 to 32 readings, a step must exceed that many σ and is closed one σ
short (its leftover keeps its side), and trims gather for four windows on
up to 48 readings at :data:`NOISY_TRIM_Z` standard errors, each closed one
standard error short; a trim larger than ``rebalance`` is shared like a
step.

Never on stale or NaN data: :meth:`Controller.reading` with ``None`` or a
non-finite value changes nothing, and a device only serves what
:meth:`Controller.serve` gives while its meter is fresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from meteremu.control.allocate import Slot, allocate, concentrate
from meteremu.control.options import ControlOptions
from meteremu.meter import IClock, Meter
from meteremu.reading import Reading

BIG = 1e6  # W: "no known limit"
SATURATION_EVIDENCE = 50.0  # W: only an adjustment this large that is not followed counts as a miss
FORGET_AFTER = 60.0  # s without a poll: the battery is gone (a CT forgets it sooner and says so)
NOISE_READINGS = 16  # quiet reading-to-reading jumps kept to estimate the load's noise
NOISE_MIN = 3  # quiet jumps before the noise is estimated (four readings give three)
TRIM_NOISE_READINGS = 128  # quiet jumps kept to estimate the noise (σ) trims and a noisy house are judged on
TRIM_READINGS = 12  # quiet readings kept as a trim's evidence
TRIM_Z = 2.0  # a trim needs the mean of its evidence this many standard errors away
PAIR_TRIM = 2.0  # W: a single battery's trim that misses by more than this is made by two
TRIM_CHANGE = 4.0  # a quiet reading this many noise units from the evidence: the load changed
INTEGER_LAW = ("VNS", "HMG")  # battery types that run the Marstek integer law (Venus, HMG-50)
TRACKING_LAW = ("HMJ", "HMA")  # B2500: DC channels stepping toward out + 0.9·value on every answer
TRACK_PROGRESS = 30.0  # W toward its target within response_time: a tracking battery follows
TRACK_HOLD = 25.0  # W: a B2500 holds within ±10 W per channel, so 0.9 x this moves it
TRIM_RUNNING = 20.0  # W: a battery putting out this much takes a small move (no rest deadband)
MISSES = 1  # an adjustment sent twice (past the spike filter) and not followed: full or empty
NOISY_READINGS = 32  # a noisy house: quiet readings a small error is judged on (at most)
NOISY_LEAST = 8  # a noisy house: quiet readings before a small error is judged
NOISY_TRIM_READINGS = 48  # a noisy house: quiet readings kept as a trim's evidence
NOISY_TRIM_WINDOWS = 4  # a noisy house: trims gather evidence for this many trim windows
NOISY_Z = 3.5  # a noisy house: standard errors a mean must stand out (and noise units a step must exceed)
# A noisy house: standard errors a trim's evidence must stand out. Lower than NOISY_Z: a trim
# follows a step (whose leftover is known to be there, one σ closed short) at most ``trims``
# times; at 3.5 a 140 W leftover took 20-25 readings to trim (two_venus_noisy big-step settle
# p95, 30 seeds: 16.5 s at 3.5, 14.4 s at 2.5, no more import or hunting).
NOISY_TRIM_Z = 2.5


class Quality(StrEnum):
    """The meter's control state, for the overview, metrics and MQTT."""

    STABLE = "stable"
    OFF_TARGET = "off_target"
    LIMITED = "limited"  # off target because the batteries that could move are full or empty
    IDLE = "idle"  # no battery, or no usable reading


@dataclass
class BatteryState:
    key: str
    weight: float
    reporting: bool
    seen_at: float
    power: float = 0.0  # W, + discharge (reported; silent batteries: 0)
    phase: str = ""
    target: float | None = None
    ref_power: float = 0.0  # power when it last moved
    changed_at: float = -math.inf  # when it last moved by more than move_tolerance
    served_at: float = -math.inf  # when it was last given a non-zero adjustment
    served_from: float = 0.0  # its power then
    new_value: bool = False  # a fresh adjustment waits for its next poll
    last_value: float = 0.0  # the last adjustment it was given (silent batteries: the last share)
    asked: float = 0.0  # the last adjustment (W, without bias)
    judged: bool = True  # the last adjustment was judged (followed or missed)
    sends: int = 0  # times the last adjustment was sent (a second time when the first was not taken)
    misses: int = 0  # adjustments in a row it did not follow
    saturations: int = 0  # times in a row it was found full or empty
    miss_sign: int = 0
    full_until: float = -math.inf  # cannot charge more (below full_at) until then
    full_at: float = 0.0
    empty_until: float = -math.inf  # cannot discharge more (above empty_at) until then
    empty_at: float = 0.0
    interval: float = math.inf  # s between its polls (smoothed): who acts first on a trim
    rest_deadband: float = 10.0  # W its firmware holds at rest and while charging (HMG-50: 20)
    trimmable: bool = True  # its firmware runs the Marstek integer law (a trim is carried out exactly)
    trimming: bool = False  # its pending adjustment is a trim (below min_step is allowed)
    tracking: bool = False  # its firmware steps toward the value on every answer (B2500): fed every poll

    def state(self, now: float) -> str:
        if now < self.full_until:
            return "full"
        if now < self.empty_until:
            return "empty"
        if self.new_value or not self.judged or now - self.changed_at < 2.0:
            return "moving"
        return "steady"


@dataclass
class Decision:
    """The controller's latest view of the meter."""

    grid: float | None = None
    at: float = -math.inf
    error: float = 0.0
    quality: Quality = Quality.IDLE
    decisions: int = 0
    ignored_readings: int = 0  # None / NaN readings
    gain: float = 1.0  # silent batteries' hand-off gain
    gain_error: float = 0.0  # the error when the gain was last raised
    recent: list[float] = field(default_factory=list)  # the last readings' errors
    silent_error: float = 0.0  # the error silent batteries share
    history: list[tuple[float, float]] = field(default_factory=list)  # (time, |error|) for the gain


class Controller:
    """Per-battery values for the batteries of one meter (see the module docstring)."""

    def __init__(self, clock: IClock, options: ControlOptions | None = None) -> None:
        self.clock = clock
        self.options = options or ControlOptions()
        self.batteries: dict[str, BatteryState] = {}
        self.view = Decision()
        self._window: list[float] = []  # errors of the quiet readings since the last decision
        self._last_quiet: float | None = None
        self._noise_jumps: list[float] = []  # |Δload| between consecutive quiet readings (the household's noise)
        self._trim_until = -math.inf  # a leftover after a step is trimmed until then
        self._trims_left = 0
        self._loads: list[float] = []  # error + Σ power of quiet readings since the step (the trim's evidence)

    def follow(self, meter: Meter) -> None:
        """Take every new reading of ``meter`` (a new reading is fresh by definition)."""
        meter.add_listener(self._on_reading)

    def _on_reading(self, meter: Meter, reading: Reading) -> None:
        self.reading(reading.total_act_power)

    # -- what the device tells it -------------------------------------------------------------
    def report(self, key: str, power: float | None, phase: str = "", model: str = "") -> BatteryState:
        """A battery polled; ``power`` is its reported output (None on the Shelly path).

        ``model`` is the battery type it names (CT002: ``VNSE3-0``, ``HMG-50``,
        ``HMJ-2``...), for the firmware facts a trim needs.
        """
        now = self.clock.seconds()
        battery = self.batteries.get(key)
        if battery is None:
            weight = self.options.weights.get(key, self.options.default_weight)
            battery = self.batteries[key] = BatteryState(key, weight, power is not None, now)
            if power is not None:
                battery.power = battery.ref_power = float(power)
        gap = now - battery.seen_at
        if gap > 0:
            battery.interval = gap if math.isinf(battery.interval) else 0.7 * battery.interval + 0.3 * gap
        battery.seen_at = now
        battery.phase = phase
        if model:
            battery.rest_deadband = 20.0 if model.upper().startswith("HMG") else 10.0
            battery.trimmable = model.upper().startswith(INTEGER_LAW)
            battery.tracking = model.upper().startswith(TRACKING_LAW)
        if power is not None and math.isfinite(power):
            battery.reporting = True
            battery.power = float(power)
            if abs(battery.power - battery.ref_power) > self.options.move_tolerance:
                battery.ref_power = battery.power
                battery.changed_at = now
            self._check_followed(battery, now)
        return battery

    def forget(self, key: str) -> None:
        """A battery left (its device evicted it): its power no longer counts."""
        self.batteries.pop(key, None)

    def _prune(self, now: float) -> None:
        """Forget batteries silent for ``FORGET_AFTER`` s (a device that never says so)."""
        for key in [k for k, b in self.batteries.items() if now - b.seen_at > FORGET_AFTER]:
            del self.batteries[key]

    def reading(self, grid: float | None) -> None:
        """A new meter reading (total W, + import). None or NaN: nothing is decided."""
        now = self.clock.seconds()
        view = self.view
        if grid is None or not math.isfinite(grid):
            view.ignored_readings += 1
            view.grid = None
            view.quality = Quality.IDLE
            return
        opts = self.options
        view.grid, view.at = grid, now
        view.error = error = grid - opts.target
        # silent batteries share the mean error of the last readings (noise); a jump starts afresh
        if view.recent and abs(error - sum(view.recent) / len(view.recent)) >= opts.fast_error:
            view.recent.clear()
        view.recent.append(error)
        del view.recent[:-opts.average]
        view.silent_error = sum(view.recent) / len(view.recent)
        self._update_gain(now, error)
        self._prune(now)
        if not self.batteries:
            view.quality = Quality.IDLE
            return
        reporting = self._reporting()
        quiet = bool(reporting) and all(self._steady(b, now) and not b.new_value for b in reporting)
        view.quality = Quality.STABLE if abs(error) < opts.deadband else Quality.OFF_TARGET
        if not quiet:
            self._window.clear()
            return
        # A small error is judged on the mean of a few quiet readings (the meter's
        # noise must not move anyone); a large one (a step) is acted on at once.
        load = error + sum(b.power for b in reporting)  # the outputs are steady: what the meter saw
        noise = self._noise()  # before this reading's own jump joins: it may be a step
        noisy = self._noisy(noise)
        small = abs(error) < self._fast_threshold(load, noise if noisy else 0.0)
        self._window.append(error)
        del self._window[:-(NOISY_READINGS if noisy else opts.average)]
        if small and self._trim_due(reporting, load, now):
            return
        if small and len(self._window) < (NOISY_LEAST if noisy else opts.average):
            return
        judged = sum(self._window) / len(self._window) if small else error
        if not small and noisy:
            # closed one noise unit short: the leftover keeps its side and the trims close
            # it, where a step sized on one reading's noise would leave it either way
            judged -= math.copysign(noise, error)
        if small and noisy:
            standard_error = noise / math.sqrt(len(self._window))
            if abs(judged) < max(opts.deadband, NOISY_Z * standard_error):
                judged = 0.0  # not told apart from the household's noise (yet): inside the deadband
            else:  # one standard error short, as a trim: an estimate this uncertain must not cross over
                judged -= math.copysign(standard_error, judged)
        elif small and abs(judged) >= opts.deadband and not self._consistent(judged):
            # followed only once every quiet reading of the window shows it: a load that
            # comes and goes (a washer's motor pausing 3 s) would be chased
            view.quality = Quality.OFF_TARGET
            return
        if abs(judged) < opts.deadband:
            view.quality = Quality.STABLE
            if self._unbalanced(reporting, now):
                self._decide(reporting, 0.0, now, rebalance=True)  # toward the shares, net zero
            else:
                for battery in reporting:
                    battery.target = battery.power
            return
        view.quality = Quality.LIMITED if self._limited(judged, now) else Quality.OFF_TARGET
        self._window.clear()
        if not small:
            window = opts.trim_window * (NOISY_TRIM_WINDOWS if noisy else 1)
            self._trim_until, self._trims_left = now + window, opts.trims
            self._loads = [load]
        self._decide(reporting, judged, now)

    def _fast_threshold(self, load: float, noise: float) -> float:
        """How large an error must be to be acted on at once: ``fast_error``, or 3× the load's noise.

        The noise is the median jump of the load (``error + Σ power``, the
        outputs steady, so what the meter saw) between consecutive quiet
        readings: the household's own, even across a move in between, so a
        house whose noise looks like steps at first still learns it; the
        median ignores the odd real step. On a ±10 W house that is about
        10 W and ``fast_error`` rules; on a ±150 W one about 150 W, and
        without this every reading
        beyond 250 W was "a step": the batteries chased the noise reading by
        reading (venus_noisy: some 1300 such moves in 30 min against 13 real
        events) and leaked more than a battery alone on the plain value.
        On a noisy house (``noise``: σ, else 0) also :data:`NOISY_Z` σ.
        """
        if self._last_quiet is not None:
            self._noise_jumps.append(abs(load - self._last_quiet))
            del self._noise_jumps[:-TRIM_NOISE_READINGS]
        self._last_quiet = load
        threshold = self.options.fast_error
        recent = self._noise_jumps[-NOISE_READINGS:]  # a short history: it follows a change of house
        if len(recent) >= NOISE_READINGS // 2:
            ordered = sorted(recent)
            threshold = max(threshold, 3.0 * ordered[len(ordered) // 2])
        return max(threshold, NOISY_Z * noise)

    # -- what the device serves ----------------------------------------------------------------
    def serve(self, key: str) -> tuple[float, bool]:
        """``(value in W, is it new)`` for this battery's poll now (+ import = discharge more).

        For a reporting battery a new value is given once; after that it
        gets 0 (its device keeps ``info_idx``, so it does not act twice).
        """
        battery = self.batteries.get(key)
        now = self.clock.seconds()
        if battery is None or self.view.grid is None:
            return 0.0, False
        if not battery.reporting:
            value = self._silent_share(battery, now)
            battery.last_value = value
            return value, value != 0.0
        if battery.tracking:
            return self._track(battery, now)
        resend = False
        if not battery.new_value:
            self._check_followed(battery, now)
            if battery.target is not None and self._may_adjust(battery, now):
                battery.new_value = True
            elif battery.target is not None and self._may_resend(battery, now):
                battery.new_value = resend = True
            if not battery.new_value:  # a repeat; ``last_value`` keeps the last adjustment (views)
                return 0.0, False
        battery.new_value = False
        assert battery.target is not None
        value = battery.target - battery.power
        if abs(value) < self._least(battery):
            battery.last_value = 0.0
            return 0.0, False
        battery.served_at = now
        if resend:
            battery.sends += 1
        else:
            battery.served_from, battery.sends = battery.power, 1
            battery.asked, battery.judged = value, False
        return self._give(battery, value)

    def _track(self, battery: BatteryState, now: float) -> tuple[float, bool]:
        """A tracking battery is given what is left of its move on every poll.

        The B2500's firmware recomputes ``out + 0.9·value`` from its measured
        output on every answer and moves each DC channel about 17 W towards
        it (specs/batteries.md §2.6): one value moves it one step, so a
        one-shot adjustment would leave it where it was and look like an
        empty battery. Fed the remaining error each time, it converges on
        its target in as many cycles as its channels need. A new move (or a
        reversal) starts its judgement, from when and where it was asked.
        """
        battery.new_value = False
        self._check_followed(battery, now)
        if battery.target is None:
            return 0.0, False
        value = battery.target - battery.power
        if abs(value) < max(self.options.min_step, TRACK_HOLD):
            battery.last_value = 0.0
            return 0.0, False
        if battery.judged or value * battery.asked <= 0:
            battery.served_at, battery.served_from, battery.sends = now, battery.power, 1
            battery.asked, battery.judged = value, False
        return self._give(battery, value)

    def _give(self, battery: BatteryState, value: float) -> tuple[float, bool]:
        """The adjustment as sent: a discharge step gets ``import_bias`` (the law takes 5 W off)."""
        if value > 0 and battery.power >= 0:
            value += self.options.import_bias
        battery.last_value = value
        return value, True

    # -- reporting batteries ----------------------------------------------------------------------
    def _reporting(self) -> list[BatteryState]:
        return [b for b in self.batteries.values() if b.reporting]

    def _steady(self, battery: BatteryState, now: float) -> bool:
        """Not moving for ``settle`` s, and it has reported its power since its last adjustment.

        A battery polling every 3 s reports the power it had before the move
        until its next poll: a reading in between is not the result of its
        outputs as the controller knows them.
        """
        return (now - battery.changed_at >= self.options.settle and now - battery.served_at >= self.options.settle
                and battery.seen_at > battery.served_at)

    def _least(self, battery: BatteryState) -> float:
        """The smallest adjustment worth sending: ``min_step``, or ``trim_min`` for a trim."""
        return self.options.trim_min if battery.trimming else self.options.min_step

    def _may_adjust(self, battery: BatteryState, now: float) -> bool:
        """Off its target, steady, and its firmware's gate has passed since the last adjustment."""
        assert battery.target is not None
        return (battery.judged and abs(battery.target - battery.power) >= self._least(battery)
                and now - battery.served_at >= self.options.pace and self._steady(battery, now))

    def _may_resend(self, battery: BatteryState, now: float) -> bool:
        """The last adjustment was not taken (yet): send it once more after ``pace``.

        The Marstek laws skip the first sample of a jump while their output is
        steady (the one-shot spike filter, specs §2.2) and force the next one
        through: an adjustment is often taken only the second time.
        """
        assert battery.target is not None
        return (not battery.judged and battery.sends < 2 and now - battery.served_at >= self.options.pace
                and abs(battery.target - battery.power) >= self._least(battery))

    def _envelope(self, battery: BatteryState, now: float) -> tuple[float, float]:
        opts = self.options
        lo = -opts.max_charge.get(battery.key, BIG)
        hi = opts.max_discharge.get(battery.key, BIG)
        if now < battery.full_until:
            lo = max(lo, min(battery.full_at, 0.0))
        if now < battery.empty_until:
            hi = min(hi, max(battery.empty_at, 0.0))
        return lo, hi

    def _consistent(self, judged: float) -> bool:
        """Every reading of the window on the side of ``judged``: beyond the deadband when the
        error is mid-size (three deadbands or more), beyond half of it when smaller.

        Readings of −1 W around one 3 s pause of a washer's motor (−120 W)
        average past the deadband; readings that near zero are not an error.
        """
        deadband = self.options.deadband
        floor = deadband if abs(judged) >= 3 * deadband else deadband / 2
        return all(e * judged > 0 and abs(e) >= floor for e in self._window)

    def _unbalanced(self, reporting: list[BatteryState], now: float) -> bool:
        """Someone is further than ``rebalance`` from its share of what they put out together."""
        if len(reporting) < 2:
            return False
        envelopes = [self._envelope(b, now) for b in reporting]
        shares = allocate(sum(b.power for b in reporting),
                          [Slot(b.weight, lo, hi) for b, (lo, hi) in zip(reporting, envelopes, strict=True)])
        return any(abs(share - b.power) > self.options.rebalance for share, b in zip(shares, reporting, strict=True))

    def _decide(self, reporting: list[BatteryState], error: float, now: float, rebalance: bool = False) -> None:
        """Share ``Σ power + error`` between the reporting batteries; mark who must move.

        A rebalance (net zero) moves only the batteries that must put out more:
        the others follow on the next readings, once the grid shows the
        surplus. Were both sent at once, a battery that cannot rise (empty,
        its hold just over) would leave the other's drop as import until it
        is judged missed.
        """
        opts = self.options
        silent_weight = sum(b.weight for b in self.batteries.values() if not b.reporting)
        weight = sum(b.weight for b in reporting)
        part = error * weight / (weight + silent_weight) if weight + silent_weight > 0 else 0.0
        total = sum(b.power for b in reporting) + part
        envelopes = [self._envelope(b, now) for b in reporting]
        outputs = allocate(total, [Slot(b.weight, lo, hi) for b, (lo, hi) in zip(reporting, envelopes, strict=True)])
        moves = [out - b.power for out, b in zip(outputs, reporting, strict=True)]
        room = [(lo - b.power, hi - b.power) for b, (lo, hi) in zip(reporting, envelopes, strict=True)]
        moves = concentrate(moves, opts.min_step, room)
        if rebalance:
            moves = [max(0.0, m) for m in moves]
        self.view.decisions += 1
        for battery, move in zip(reporting, moves, strict=True):
            battery.target = battery.power + move
            battery.trimming = False
            if not battery.judged and move * battery.asked < 0:
                battery.judged = True  # superseded by a move the other way: neither followed nor missed
            battery.new_value = move != 0.0 and battery.judged and now - battery.served_at >= opts.pace

    def _noise(self) -> float:
        """The household's noise per reading (W, one standard deviation), from the quiet jumps.

        The mean jump between consecutive quiet readings is 1.128 σ of each
        (two independent draws), jumps over five times the median (a real
        step) left out: steadier than the median (whose estimate from 17
        jumps ranged 90-240 W on a σ = 150 W house, 5-95 %: a 3.5 SE test on
        a σ taken 40 % low fires on noise). The longer history makes it
        steadier than the fast threshold's, which must follow a change of
        house quickly.
        """
        if len(self._noise_jumps) < NOISE_MIN:
            return self.options.deadband / 2
        ordered = sorted(self._noise_jumps)
        cap = 5.0 * ordered[len(ordered) // 2]  # a real step among the jumps is left out
        kept = [j for j in ordered if j <= cap]
        return sum(kept) / len(kept) / 1.128

    def _noisy(self, noise: float) -> bool:
        """The household's noise hides a deadband-sized error in ``average`` readings.

        On a ±10 W house (σ ≈ 10 W) the mean of four readings is good to
        ±10 W, inside the 20 W deadband; on a ±150 W house it is ±150 W, so
        every fourth reading was "an error" and the batteries were moved ~85
        times in ten minutes on target. There a small error must stand
        :data:`NOISY_Z` standard errors out in up to :data:`NOISY_READINGS`
        readings, a step must exceed that many noise units too, and trims
        gather longer (:meth:`_trim_due`).
        """
        return TRIM_Z * noise / math.sqrt(self.options.average) > self.options.deadband

    def _trim_due(self, reporting: list[BatteryState], load: float, now: float) -> bool:
        """After a step: close the leftover once the quiet readings since the step show it.

        Each quiet reading is a sample of the load, ``error + Σ power`` (the
        outputs are steady, so they are what the meter saw); the step's own
        reading is the first. Their mean is what the batteries should put out
        together; when it is confidently away from what they do (``TRIM_Z``
        standard errors of the mean, and ``trim_min``), one battery closes the
        difference (:meth:`_trim`). A trim does not start the evidence afresh:
        the load did not change, so every trim is more accurate than the last.
        A reading far from the evidence (``TRIM_CHANGE`` × the noise) is a new
        load: the evidence starts again from it, and a difference that large
        is left to the ordinary rules (a washer's motor pausing is not chased).
        """
        opts = self.options
        if (opts.trim_min <= 0 or now >= self._trim_until or not self._loads
                or any(not b.reporting for b in self.batteries.values())):
            return False
        noise = self._noise()
        noisy = self._noisy(noise)
        mean = sum(self._loads) / len(self._loads)
        if abs(load - mean) > TRIM_CHANGE * noise:  # the load moved: no longer the step's leftover
            self._loads.clear()
        self._loads.append(load)
        del self._loads[:-(NOISY_TRIM_READINGS if noisy else TRIM_READINGS)]
        n = len(self._loads)
        if n < 2 or self._trims_left <= 0:
            return False
        move = sum(self._loads) / n - sum(b.power for b in reporting)
        if (abs(move) < max(opts.trim_min, (NOISY_TRIM_Z if noisy else TRIM_Z) * noise / math.sqrt(n))
                or abs(move) >= max(opts.deadband, TRIM_CHANGE * noise)):  # a new load: the ordinary rules
            return False
        if noisy:  # one standard error short: an estimate this uncertain must not cross over
            move -= math.copysign(noise / math.sqrt(n), move)
        if noisy and abs(move) > opts.rebalance and len(reporting) > 1:
            self._decide(reporting, move, now)  # a trim this large is shared, as a step is
        elif not self._trim(reporting, move, now):
            return False
        self._trims_left -= 1
        self._window.clear()
        return True

    def _takes(self, battery: BatteryState, move: float) -> float | None:
        """The move nearest ``move`` that this battery's firmware carries out exactly, or None.

        The Marstek integer law (specs/batteries.md §2.2): discharging, it
        takes any decrease and an increase of 6 W or more (the ``import_bias``
        makes it 11 W, the law takes 5 W off); charging, it holds anything
        inside its rest deadband (10 W, HMG-50 20 W), so a move is at least
        one more than that (rounded up from half of it). Idle batteries and
        other laws (the B2500's DC channels) are not trimmed.
        """
        if not battery.trimmable:
            return None
        if battery.power >= TRIM_RUNNING:
            return move if move < 0 or move >= self.options.trim_min else None
        if battery.power <= -TRIM_RUNNING:
            least = battery.rest_deadband + 1.0
            if abs(move) >= least:
                return move
            return math.copysign(least, move) if abs(move) >= least / 2 else None
        return None

    def _trim(self, reporting: list[BatteryState], error: float, now: float) -> bool:
        """Close a small leftover after a step with one battery: the one that polls most often.

        Only a running battery (it can take a move smaller than its rest
        deadband) with room in that direction; the others keep their targets.
        When the nearest move one battery carries out is more than
        :data:`PAIR_TRIM` off (a charging Venus: 11 W or nothing), two
        batteries close it together (:meth:`_pair`).
        """
        candidates = []
        for battery in reporting:
            lo, hi = self._envelope(battery, now)
            move = self._takes(battery, error)
            if move is not None and lo <= battery.power + move <= hi:
                candidates.append((abs(error - move), battery.interval, battery.key, move, battery))
        moves: list[tuple[BatteryState, float]] = []
        if candidates:
            *_, move, battery = min(candidates, key=lambda c: c[:3])
            moves = [(battery, move)]
        if not candidates or min(c[0] for c in candidates) > PAIR_TRIM:
            moves = self._pair(reporting, error, now) or moves
        if not moves:
            return False
        self.view.decisions += 1
        for battery, move in moves:
            battery.target = battery.power + move
            battery.trimming = True
            if not battery.judged and move * battery.asked < 0:
                battery.judged = True
            battery.new_value = battery.judged and now - battery.served_at >= self.options.pace
        for other in reporting:
            if all(other is not battery for battery, _ in moves):
                other.target = other.power
        return True

    def _pair(self, reporting: list[BatteryState], error: float,
              now: float) -> list[tuple[BatteryState, float]] | None:
        """A trim no single battery carries out exactly, as two moves that do: ``a + b = error``.

        A charging Venus holds anything inside its rest deadband, so alone it
        closes a 7 W leftover as 11 W and leaves 4 W the other way; the trims
        then flip around the leftover (its estimate crosses ±5.5 W with the
        noise) and the grid, 5 W off with ±10 W of noise, leaves a 25 W band
        every few seconds. One battery moving its least the other way (``b``)
        and another the rest (``a``), each beyond its deadband, closes the
        leftover to the watt; the two stay within a few watts of their shares.
        """
        def exact(battery: BatteryState, move: float) -> bool:
            lo, hi = self._envelope(battery, now)
            return self._takes(battery, move) == move and lo <= battery.power + move <= hi

        candidates = []
        for second in reporting:
            least = self._least_exact(second)
            if least is None:
                continue
            b = -math.copysign(least, error)
            a = error - b
            if not exact(second, b):
                continue
            candidates += [(abs(a) + abs(b), first.interval, first.key, second.key, first, a, second, b)
                           for first in reporting if first is not second and exact(first, a)]
        if not candidates:
            return None
        *_, first, a, second, b = min(candidates, key=lambda c: c[:4])
        return [(first, a), (second, b)]

    def _least_exact(self, battery: BatteryState) -> float | None:
        """The smallest move (W) this battery's firmware carries out exactly in either direction."""
        if not battery.trimmable:
            return None
        if battery.power <= -TRIM_RUNNING:
            return battery.rest_deadband + 1.0
        if battery.power >= TRIM_RUNNING:
            return self.options.trim_min
        return None

    def _check_followed(self, battery: BatteryState, now: float) -> None:
        """Judge the last adjustment once: moved 30 % of the way, or missed.

        Missed: sent twice (:meth:`_may_resend`) and still not moved
        ``response_time`` after the second. Then the battery is full
        (charging) or empty (discharging) in that direction for
        ``saturation_hold``, its target is where it stands, and the next
        decision hands its share to the others.
        """
        if battery.judged or battery.asked == 0.0:
            return
        opts = self.options
        sign = 1 if battery.asked > 0 else -1
        moved = (battery.power - battery.served_from) * sign
        enough = 0.3 * abs(battery.asked)
        if battery.tracking:  # it ramps: moving at all is following
            enough = min(enough, TRACK_PROGRESS)
        if moved >= enough:
            battery.judged = True
            battery.misses, battery.miss_sign = 0, 0
            battery.saturations = 0
            return
        once = battery.sends < 2 and not battery.tracking  # a tracking battery is fed on every poll
        if once or now - battery.served_at < opts.response_time:
            return  # sent twice (or fed all along) and still not moved after response_time: judged
        battery.judged = True
        if abs(battery.asked) < SATURATION_EVIDENCE:  # a firmware may round or hold a small value
            return
        battery.misses = battery.misses + 1 if battery.miss_sign == sign else 1
        battery.miss_sign = sign
        if battery.misses >= MISSES:
            battery.misses = 0
            # Held longer each time it is found still full or empty (an empty battery stays
            # empty for hours; every retry costs a few seconds of error): 1, 2, 4, 8, 16 x.
            hold = opts.saturation_hold * 2 ** min(battery.saturations, 4)
            battery.saturations += 1
            if sign < 0:
                battery.full_until, battery.full_at = now + hold, battery.power
            else:
                battery.empty_until, battery.empty_at = now + hold, battery.power
            battery.target = battery.power

    def _limited(self, error: float, now: float) -> bool:
        """Off target while every battery that could close it is full or empty."""
        if not self.batteries:
            return False
        if error > 0:
            return all(now < b.empty_until for b in self.batteries.values())
        return all(now < b.full_until for b in self.batteries.values())

    # -- silent batteries (Shelly path) ----------------------------------------------------------
    def _update_gain(self, now: float, error: float) -> None:
        """Grow the silent batteries' gain while the error does not shrink (hand-off).

        Back to 1 as soon as the error changes sign or halves: a gain raised
        while someone was full must not overshoot once the load drops.
        """
        view, opts = self.view, self.options
        if view.gain > 1.0 and (error * view.gain_error < 0 or abs(error) < 0.5 * abs(view.gain_error)):
            view.gain = 1.0
            view.history.clear()
        view.history.append((now, abs(error)))
        while view.history and now - view.history[0][0] > opts.response_time:
            view.history.pop(0)
        silent = sum(1 for b in self.batteries.values() if not b.reporting)
        if abs(error) < opts.deadband or silent <= 1:
            view.gain = 1.0
            return
        oldest = view.history[0]
        if now - oldest[0] >= opts.response_time * 0.9 and abs(error) > 0.7 * oldest[1]:
            view.gain = min(float(silent), view.gain * 1.5)
            view.gain_error = error
            view.history.clear()
            view.history.append((now, abs(error)))

    def _silent_share(self, battery: BatteryState, now: float) -> float:
        view, opts = self.view, self.options
        error = view.silent_error
        if view.grid is None or abs(error) < opts.deadband:
            return 0.0
        silent = [b for b in self.batteries.values() if not b.reporting and now - b.seen_at <= 30.0]
        reporting_weight = sum(b.weight for b in self._reporting())
        weight = sum(b.weight for b in silent) + reporting_weight
        if battery.weight <= 0 or weight <= 0:
            return 0.0
        share = error * battery.weight / weight * view.gain
        share = max(-abs(error), min(abs(error), share))
        if abs(share) < opts.min_step:
            # fold small shares onto the battery with the largest weight (then the first key)
            leader = max(silent, key=lambda b: (b.weight, -ord(b.key[0]) if b.key else 0)) if silent else battery
            return error if leader is battery and abs(error) >= opts.min_step else 0.0
        return share

    # -- views ------------------------------------------------------------------------------------
    def quality(self) -> Quality:
        return self.view.quality

    def overview(self) -> dict[str, Any]:
        now = self.clock.seconds()
        total_weight = sum(b.weight for b in self.batteries.values()) or 1.0
        return {
            "quality": self.view.quality.value, "grid": self.view.grid, "error": round(self.view.error, 1),
            "decisions": self.view.decisions, "ignored_readings": self.view.ignored_readings,
            "batteries": [{
                "key": b.key, "path": "reported" if b.reporting else "served", "phase": b.phase,
                "power": round(b.power, 1) if b.reporting else None,
                "target": None if b.target is None else round(b.target, 1),
                "served": round(b.last_value, 1), "share": round(b.weight / total_weight, 3),
                "state": b.state(now)} for b in sorted(self.batteries.values(), key=lambda b: b.key)],
        }
