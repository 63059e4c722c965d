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
MISSES = 1  # an adjustment sent twice (past the spike filter) and not followed: full or empty


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
        self._jumps: list[float] = []  # |Δerror| between consecutive quiet readings (the load's own noise)
        self._last_quiet: float | None = None

    def follow(self, meter: Meter) -> None:
        """Take every new reading of ``meter`` (a new reading is fresh by definition)."""
        meter.add_listener(self._on_reading)

    def _on_reading(self, meter: Meter, reading: Reading) -> None:
        self.reading(reading.total_act_power)

    # -- what the device tells it -------------------------------------------------------------
    def report(self, key: str, power: float | None, phase: str = "") -> BatteryState:
        """A battery polled; ``power`` is its reported output (None on the Shelly path)."""
        now = self.clock.seconds()
        battery = self.batteries.get(key)
        if battery is None:
            weight = self.options.weights.get(key, self.options.default_weight)
            battery = self.batteries[key] = BatteryState(key, weight, power is not None, now)
            if power is not None:
                battery.power = battery.ref_power = float(power)
        battery.seen_at = now
        battery.phase = phase
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
            self._last_quiet = None
            return
        # A small error is judged on the mean of a few quiet readings (the meter's
        # noise must not move anyone); a large one (a step) is acted on at once.
        fast = self._fast_threshold(error)
        self._window.append(error)
        del self._window[:-opts.average]
        if abs(error) < fast and len(self._window) < opts.average:
            return
        judged = error if abs(error) >= fast else sum(self._window) / len(self._window)
        if abs(error) < fast and abs(judged) >= opts.deadband and not self._consistent(judged):
            # followed only once every quiet reading of the window shows it: a load that
            # comes and goes (a washer's motor pausing 3 s) would be chased
            view.quality = Quality.OFF_TARGET
            return
        if abs(judged) < opts.deadband:
            view.quality = Quality.STABLE
            if self._unbalanced(reporting, now):
                self._decide(reporting, 0.0, now)  # toward the shares, net zero
            else:
                for battery in reporting:
                    battery.target = battery.power
            return
        view.quality = Quality.LIMITED if self._limited(judged, now) else Quality.OFF_TARGET
        self._window.clear()
        self._decide(reporting, judged, now)

    def _fast_threshold(self, error: float) -> float:
        """How large an error must be to be acted on at once: ``fast_error``, or 3× the load's noise.

        The noise is the median jump between consecutive quiet readings (no
        battery moving, so it is the household's own; the median ignores the
        odd real step). On a ±10 W house that is about 10 W and ``fast_error``
        rules; on a ±150 W one about 150 W, and without this every reading
        beyond 250 W was "a step": the batteries chased the noise reading by
        reading (venus_noisy: some 1300 such moves in 30 min against 13 real
        events) and leaked more than a battery alone on the plain value.
        """
        if self._last_quiet is not None:
            self._jumps.append(abs(error - self._last_quiet))
            del self._jumps[:-NOISE_READINGS]
        self._last_quiet = error
        if len(self._jumps) < NOISE_READINGS // 2:
            return self.options.fast_error
        ordered = sorted(self._jumps)
        return max(self.options.fast_error, 3.0 * ordered[len(ordered) // 2])

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
        if abs(value) < self.options.min_step:
            battery.last_value = 0.0
            return 0.0, False
        battery.served_at = now
        if resend:
            battery.sends += 1
        else:
            battery.served_from, battery.sends = battery.power, 1
            battery.asked, battery.judged = value, False
        if value > 0 and battery.power >= 0:
            value += self.options.import_bias
        battery.last_value = value
        return value, True

    # -- reporting batteries ----------------------------------------------------------------------
    def _reporting(self) -> list[BatteryState]:
        return [b for b in self.batteries.values() if b.reporting]

    def _steady(self, battery: BatteryState, now: float) -> bool:
        return now - battery.changed_at >= self.options.settle and now - battery.served_at >= self.options.settle

    def _may_adjust(self, battery: BatteryState, now: float) -> bool:
        """Off its target, steady, and its firmware's gate has passed since the last adjustment."""
        assert battery.target is not None
        return (battery.judged and abs(battery.target - battery.power) >= self.options.min_step
                and now - battery.served_at >= self.options.pace and self._steady(battery, now))

    def _may_resend(self, battery: BatteryState, now: float) -> bool:
        """The last adjustment was not taken (yet): send it once more after ``pace``.

        The Marstek laws skip the first sample of a jump while their output is
        steady (the one-shot spike filter, specs §2.2) and force the next one
        through: an adjustment is often taken only the second time.
        """
        assert battery.target is not None
        return (not battery.judged and battery.sends < 2 and now - battery.served_at >= self.options.pace
                and abs(battery.target - battery.power) >= self.options.min_step)

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
        """Every reading of the window on the side of ``judged``, and beyond the deadband
        when the error is mid-size (three deadbands or more)."""
        floor = self.options.deadband if abs(judged) >= 3 * self.options.deadband else 0.0
        return all(e * judged > 0 and abs(e) >= floor for e in self._window)

    def _unbalanced(self, reporting: list[BatteryState], now: float) -> bool:
        """Someone is further than ``rebalance`` from its share of what they put out together."""
        if len(reporting) < 2:
            return False
        envelopes = [self._envelope(b, now) for b in reporting]
        shares = allocate(sum(b.power for b in reporting),
                          [Slot(b.weight, lo, hi) for b, (lo, hi) in zip(reporting, envelopes, strict=True)])
        return any(abs(share - b.power) > self.options.rebalance for share, b in zip(shares, reporting, strict=True))

    def _decide(self, reporting: list[BatteryState], error: float, now: float) -> None:
        """Share ``Σ power + error`` between the reporting batteries; mark who must move."""
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
        self.view.decisions += 1
        for battery, move in zip(reporting, moves, strict=True):
            battery.target = battery.power + move
            if not battery.judged and move * battery.asked < 0:
                battery.judged = True  # superseded by a move the other way: neither followed nor missed
            battery.new_value = move != 0.0 and battery.judged and now - battery.served_at >= opts.pace

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
        if moved >= 0.3 * abs(battery.asked):
            battery.judged = True
            battery.misses, battery.miss_sign = 0, 0
            battery.saturations = 0
            return
        if battery.sends < 2 or now - battery.served_at < opts.response_time:
            return  # sent twice and still not moved after response_time: judged
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
