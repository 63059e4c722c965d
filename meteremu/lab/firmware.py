"""The batteries' own control laws: what a battery does with the value it reads (pure).

Facts from specs/batteries.md §2.2 (firmware laws reverse-engineered by
others; the facts carry over, no code does). Every law turns one observation
-- the grid value served to it ``g`` (W, + import), its bucket count ``nb``
and its own measured AC output ``out`` (W, + discharge) -- into a new
setpoint (W, + discharge), clamped to the envelope ``[lo, hi]`` the battery
can do now (charge limit, discharge limit, SoC). Where the spec leaves a
detail open, the docstring says which reading was taken.

The laws keep their own stored setpoint and integrate on it, never on the
measured output (§2.2: "the integrator adds to its own stored setpoint"):
that is why a stale or scaled value makes a battery overshoot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol


class Law(Protocol):
    """One battery's firmware regulation step."""

    def step(self, g: float, out: float, lo: float, hi: float, nb: int = 1) -> float:
        """The new setpoint after reading ``g`` while putting out ``out``."""
        ...


def clamp(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value


def share(g: float, nb: int) -> int:
    """``int(g / nb)``: the firmware's share of a shared bucket, truncated toward zero."""
    return int(g / max(1, nb))


@dataclass
class VenusIntegerLaw:
    """Integer Venus law (VNSA-0, VNSD-0, VNSE3-0; the HMG-50 when an HME-4 steers it).

    Gate, in order: a spike filter (``|g|>db``, ``|Δg|>50``, ``|Δout|<20``:
    skip once, then the next sample is forced through; off when ``nb>1``;
    the baseline advances every cycle), the rest deadband (``|g|<db`` and
    ``out<1``: hold) and the small-import hold (``0≤g<10``). Then the
    integrator on the stored setpoint with ``gain = ctrl_ratio/100``, the
    envelope clamp, and the park at 0 (``|sp|<park_sp`` and ``g<park_g``:
    11/11 alone, 21/16 on the HMG-50, 15/15 when the bucket is shared).
    ``gain·g`` is truncated toward zero (the law is integer).
    """

    deadband: int = 10
    gain: float = 1.0
    park_sp: int = 11
    park_g: int = 11
    shared_park: tuple[int, int] = (15, 15)
    sp: int = 0
    _prev: tuple[int, int] | None = field(default=None, repr=False)
    _force: bool = field(default=False, repr=False)

    def step(self, g: float, out: float, lo: float, hi: float, nb: int = 1) -> float:
        gi, o = share(g, nb), int(round(out))
        prev, self._prev = self._prev, (gi, o)
        if (prev is not None and nb == 1 and not self._force and abs(gi) > self.deadband
                and abs(gi - prev[0]) > 50 and abs(o - prev[1]) < 20):
            self._force = True
            return self.sp
        self._force = False
        if abs(gi) < self.deadband and o < 1:
            return self.sp
        if 0 <= gi < 10:
            return self.sp
        sp = self.sp
        if o < 0 or gi < 11:
            if o < 1 and gi < -10:
                sp += int(self.gain * gi)
            elif o * gi < 0:
                sp += gi
            elif o < 0 and -11 < gi < 0:
                sp += gi - 5
        else:
            sp += int(self.gain * gi) - 5
        sp = int(clamp(sp, math.ceil(lo), math.floor(hi)))
        park_sp, park_g = (self.park_sp, self.park_g) if nb <= 1 else self.shared_park
        if abs(sp) < park_sp and gi < park_g:
            sp = 0
        self.sp = sp
        return sp


def hmg50_integer() -> VenusIntegerLaw:
    """The HMG-50 when the meter announces HME-4: ±20 W rest deadband, 21/16 park."""
    return VenusIntegerLaw(deadband=20, park_sp=21, park_g=16)


# The HMG-50's float-ramp step limits by ramp counter (specs/batteries.md §2.2).
GAIN = {-5: 410.35, -4: 350.41, -3: 180.30, -2: 60.02, -1: 50.12, 0: 50.23,
        1: 50.10, 2: 50.21, 3: 100.01, 4: 200.02, 5: 400.40}


@dataclass
class Hmg50FloatLaw:
    """HMG-50 (Venus C) float ramp, taken when the meter's model code is 1.

    Gate: spike filter without one-shot (the baseline advances every cycle),
    deadband ``|g|<20`` and ``out<1``, small-import hold ``0≤g<10``. The
    ramp counter (−5…+5) brakes (−1) when the error grows and accelerates
    (+1) otherwise; the step is ``min(sqrt(|g²−ref²|)+10, GAIN[ramp], |g|)``
    in the direction of ``g``. Our readings of what §2.2 leaves open: ``ref``
    is the grid target (0 W, so the step is ``min(GAIN[ramp], |g|)``), "the
    error grows" means ``|g|`` rose since the last sample, and the window
    pull-back moves a setpoint that ran past the envelope back inside by
    100 W (``hi−100`` / ``lo+100``) instead of pinning it at the edge. Hard
    clamp ±2500 W.
    """

    ref: float = 0.0
    limit: float = 2500.0
    sp: float = 0.0
    ramp: int = 0
    _prev: tuple[int, int] | None = field(default=None, repr=False)

    def step(self, g: float, out: float, lo: float, hi: float, nb: int = 1) -> float:
        gi, o = share(g, nb), int(round(out))
        prev, self._prev = self._prev, (gi, o)
        if prev is not None and abs(gi) > 20 and abs(gi - prev[0]) > 50 and abs(o - prev[1]) < 20:
            return self.sp
        if abs(gi) < 20 and o < 1:
            return self.sp
        if 0 <= gi < 10:
            return self.sp
        if prev is not None and abs(gi) > abs(prev[0]):
            self.ramp = max(-5, self.ramp - 1)
        else:
            self.ramp = min(5, self.ramp + 1)
        size = min(math.sqrt(abs(gi * gi - self.ref * self.ref)) + 10.0, GAIN[self.ramp], abs(gi))
        sp = self.sp + math.copysign(size, gi)
        if sp > hi:
            sp = max(hi - 100.0, 0.0) if hi > 0 else hi
        elif sp < lo:
            sp = min(lo + 100.0, 0.0) if lo < 0 else lo
        self.sp = clamp(clamp(sp, -self.limit, self.limit), lo, hi)
        return self.sp


def _channel_watts(cmd: float) -> float:
    """A B2500 channel's DC output for its command: ``(cmd−5)·10/59`` (≈17 W per 100)."""
    return max(0.0, (cmd - 5.0) * 10.0 / 59.0)


@dataclass
class B2500Law:
    """B2500 (HMJ/HMA) DC output on two channels; it never charges from AC.

    The incremental target ``out + 0.9·g`` is clamped to ``[0, max]`` and
    split over the two channels; each channel holds within ±10 W of its half
    and otherwise moves its command by ±100 (about 17 W of output per
    cycle), with an anti-windup clamp on the command. A stopped pair needs
    about ``start_w`` (80 W, issue #600) before it starts. The setpoint
    returned is what the channels put out after this cycle.
    """

    start_w: float = 80.0
    channels: int = 2
    cmd: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def step(self, g: float, out: float, lo: float, hi: float, nb: int = 1) -> float:
        top = max(0.0, hi)
        target = clamp(out + 0.9 * share(g, nb), 0.0, top)
        running = any(_channel_watts(c) > 0 for c in self.cmd)
        if not running and target < self.start_w:
            target = 0.0
        half = target / self.channels
        cmd_max = (top / self.channels) * 59.0 / 10.0 + 5.0
        for i, cmd in enumerate(self.cmd):
            watts = _channel_watts(cmd)
            if watts < half - 10.0:
                cmd += 100.0
            elif watts > half + 10.0:
                cmd -= 100.0
            self.cmd[i] = clamp(cmd, 0.0, cmd_max)
        return min(top, sum(_channel_watts(c) for c in self.cmd))


@dataclass
class IntegratorLaw:
    """A parametric integrator with a deadband, for batteries whose law is not public.

    Hoymiles MS-A2 and Growatt NOAH (specs/batteries.md §2.6 item 7):
    ``sp += gain·g`` outside ``±deadband``, clamped; their response delay is
    the plant's ``command_delay``. The parameters are placeholders until
    fitted from field traces (docs/control.md says so).
    """

    gain: float = 0.6
    deadband: float = 15.0
    sp: float = 0.0

    def step(self, g: float, out: float, lo: float, hi: float, nb: int = 1) -> float:
        gs = g / max(1, nb)
        if abs(gs) > self.deadband:
            self.sp = clamp(self.sp + self.gain * gs, lo, hi)
        else:
            self.sp = clamp(self.sp, lo, hi)
        return self.sp


LAWS = ("venus", "hmg50", "hmg50_float", "b2500", "hoymiles", "growatt")


def make_law(kind: str) -> Law:
    """A fresh law of one of :data:`LAWS`."""
    if kind == "venus":
        return VenusIntegerLaw()
    if kind == "hmg50":
        return hmg50_integer()
    if kind == "hmg50_float":
        return Hmg50FloatLaw()
    if kind == "b2500":
        return B2500Law()
    if kind == "hoymiles":
        return IntegratorLaw(gain=0.7, deadband=15.0)
    if kind == "growatt":
        return IntegratorLaw(gain=0.5, deadband=20.0)
    raise ValueError(f"unknown battery law {kind!r} (one of {', '.join(LAWS)})")
