"""One battery: how it polls, its firmware law, and its physics (pure).

:class:`BatterySpec` is what a scenario says about a battery (model, phase,
transport, cadence, limits, losses); :class:`Battery` is its state during a
run. The physics follow specs/batteries.md §2.2 and §2.6 item 5: a command
takes effect after ``command_delay``; an idle battery stays at 0 W for
``startup`` seconds after its first non-zero command; the output slews at
``slew`` W/s toward the target; below ``min_power`` it is 0; limits and SoC
bound it; charging stores ``√η`` of the AC power and discharging draws
``1/√η`` of it (η = round-trip efficiency); the standby draw comes from the
battery, or from the grid once the battery is empty.

A battery that gets no answer (a stale meter under ``on_stale: error``, a
lost packet) keeps its setpoint for ``no_reply_hold`` seconds, then falls
back to its own safe mode: 0 W (our reading of "the battery falls back to its
own safe mode", design.md §4).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

from meteremu.lab.firmware import Law, make_law

Transport = Literal["udp1010", "udp2220", "http", "ct"]

# Defaults per model: transport, cadence (s), limits (W), capacity (Wh), slew (W/s),
# command delay (s), regulation gate (s). Cadences from specs/batteries.md §2.2/§5
# (0.45 s Venus V3, 1 s HMG-50, 3.1 s V2); slews and delays are AstraMeter's
# guesses (400 W/s, 2 s start-up) or placeholders (Hoymiles, Growatt), to be
# fitted from field data. The Marstek gate: "the regulation step is gated by a
# timer of about 3000 ticks" (§2.2, from the CT002 protocol notes), read as
# 3 s with a 1 ms tick -- our assumption; AstraMeter models no gate (gate=0).
MODEL_DEFAULTS: dict[str, dict[str, object]] = {
    "venus": {"transport": "udp1010", "cadence": 0.45, "max_charge": 2500.0, "max_discharge": 800.0,
              "capacity": 5120.0, "slew": 400.0, "command_delay": 0.0, "ac_charge": True, "gate": 3.0},
    "hmg50": {"transport": "udp2220", "cadence": 1.0, "max_charge": 2500.0, "max_discharge": 2500.0,
              "capacity": 5120.0, "slew": 400.0, "command_delay": 0.0, "ac_charge": True, "gate": 3.0},
    "hmg50_float": {"transport": "udp2220", "cadence": 1.0, "max_charge": 2500.0, "max_discharge": 2500.0,
                    "capacity": 5120.0, "slew": 400.0, "command_delay": 0.0, "ac_charge": True, "gate": 3.0},
    "b2500": {"transport": "udp1010", "cadence": 1.0, "max_charge": 0.0, "max_discharge": 800.0,
              "capacity": 2240.0, "slew": 2000.0, "command_delay": 0.0, "ac_charge": False, "gate": 0.0},
    "hoymiles": {"transport": "http", "cadence": 1.0, "max_charge": 1000.0, "max_discharge": 800.0,
                 "capacity": 2240.0, "slew": 200.0, "command_delay": 1.0, "ac_charge": True, "gate": 0.0},
    "growatt": {"transport": "http", "cadence": 3.1, "max_charge": 1000.0, "max_discharge": 800.0,
                "capacity": 2048.0, "slew": 150.0, "command_delay": 2.0, "ac_charge": True, "gate": 0.0},
}


@dataclass(frozen=True)
class BatterySpec:
    """One battery of a scenario; unset fields take the model's defaults."""

    model: str
    phase: int = 0  # 0, 1, 2 = a, b, c: where its AC output goes
    transport: Transport | None = None
    cadence: float | None = None  # seconds between polls
    jitter: float = 0.05  # ± uniform jitter of each poll period (s)
    max_charge: float | None = None  # W (AC)
    max_discharge: float | None = None  # W (AC)
    capacity: float | None = None  # Wh
    soc: float = 0.6  # initial state of charge, 0..1
    soc_min: float = 0.05
    soc_max: float = 1.0
    slew: float | None = None  # W/s
    startup: float = 2.0  # s an idle battery stays at 0 W after a command
    min_power: float = 5.0  # W: below this the output is 0
    efficiency: float = 0.88  # round trip
    standby: float = 3.0  # W
    command_delay: float | None = None  # s from a setpoint to its effect
    ac_charge: bool | None = None
    no_reply_hold: float = 10.0  # s a battery holds without answers before its safe mode
    gate: float | None = None  # s: at most one regulation step this often (0: every answer)

    def resolved(self) -> BatterySpec:
        """This spec with every model default filled in."""
        if self.model not in MODEL_DEFAULTS:
            raise ValueError(f"unknown battery model {self.model!r} (one of {', '.join(MODEL_DEFAULTS)})")
        defaults = MODEL_DEFAULTS[self.model]
        changes = {name: value for name, value in defaults.items() if getattr(self, name) is None}
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass
class Battery:
    """A battery's state during a run. Times are run seconds."""

    spec: BatterySpec
    index: int
    ip: str
    law: Law
    power: float = 0.0  # W AC, + discharge
    target: float = 0.0  # W, the setpoint in effect
    setpoint: float = 0.0  # W, the law's latest setpoint (may not be in effect yet)
    soc_wh: float = 0.0
    start_at: float | None = None  # end of the start-up delay
    last_answer: float = 0.0
    last_step: float = -1e9  # when the law last ran (the gate)
    safe: bool = False  # in its own safe mode (no answers)
    pending: deque[tuple[float, float]] = field(default_factory=deque)
    # tallies (Wh, W·s of travel)
    charged_ac_wh: float = 0.0
    discharged_ac_wh: float = 0.0
    standby_wh: float = 0.0
    clipped_wh: float = 0.0  # SoC set back to 0 or full within a step (tiny, for the balance)
    travel: float = 0.0
    polls: int = 0
    answers: int = 0
    served: float | None = None  # the last value it read
    info_idx: int | None = None  # CT path: the last info_idx it took (it dedupes on it)
    inspections: int = 1  # CT path: polls sent with phase 0 before it names its phase

    @property
    def mac(self) -> str:
        """Its MAC (the CT keys batteries by it)."""
        return f"02AB0000{self.index:04X}"

    @classmethod
    def build(cls, spec: BatterySpec, index: int) -> Battery:
        spec = spec.resolved()
        assert spec.capacity is not None
        return cls(spec=spec, index=index, ip=f"127.0.0.{11 + index}", law=make_law(spec.model),
                   soc_wh=spec.capacity * spec.soc)

    # -- limits --------------------------------------------------------------
    @property
    def capacity(self) -> float:
        assert self.spec.capacity is not None
        return self.spec.capacity

    def envelope(self) -> tuple[float, float]:
        """``(lo, hi)``: the most it may charge (negative) and discharge now."""
        spec = self.spec
        assert spec.max_charge is not None and spec.max_discharge is not None
        can_charge = spec.ac_charge and self.soc_wh < spec.soc_max * self.capacity
        can_discharge = self.soc_wh > spec.soc_min * self.capacity
        return (-spec.max_charge if can_charge else 0.0, spec.max_discharge if can_discharge else 0.0)

    def headroom(self) -> tuple[float, float]:
        """``(charge, discharge)`` W it could still add now (for the *avoidable* energies)."""
        lo, hi = self.envelope()
        return max(0.0, self.power - lo), max(0.0, hi - self.power)

    # -- control -------------------------------------------------------------
    def observe(self, now: float, served: float | None, nb: int = 1, info_idx: int | None = None,
                inspecting: bool = False) -> None:
        """One poll's outcome: the value served (W, + import), or None for no answer.

        On the CT path ``nb`` is the bucket's battery count (the law divides
        by it), an ``info_idx`` equal to the last one taken is a repeat (the
        battery dedupes on it: alive, no step), and an answer to a phase-0
        inspection poll is not regulated on.
        """
        self.polls += 1
        if served is not None and (inspecting or (info_idx is not None and info_idx == self.info_idx)):
            self.answers += 1
            self.last_answer = now
            self.safe = False
            return
        if info_idx is not None and served is not None:
            self.info_idx = info_idx
        if served is None:
            if now - self.last_answer > self.spec.no_reply_hold and not self.safe:
                self.safe = True
                self._command(now, 0.0)
            return
        self.answers += 1
        self.served = served
        self.last_answer = now
        self.safe = False
        assert self.spec.gate is not None
        if self.spec.gate and now - self.last_step < self.spec.gate:
            return
        self.last_step = now
        lo, hi = self.envelope()
        self._command(now, self.law.step(served, self.power, lo, hi, nb))

    def _command(self, now: float, setpoint: float) -> None:
        self.setpoint = setpoint
        assert self.spec.command_delay is not None
        if self.spec.command_delay <= 0:
            self._apply(now, setpoint)
        else:
            self.pending.append((now + self.spec.command_delay, setpoint))

    def _apply(self, now: float, setpoint: float) -> None:
        if abs(setpoint) < self.spec.min_power:
            setpoint = 0.0
        if self.target == 0.0 and self.power == 0.0 and setpoint != 0.0 and self.start_at is None:
            self.start_at = now + self.spec.startup
        if setpoint == 0.0:
            self.start_at = None
        self.target = setpoint

    def next_change(self) -> float | None:
        """When a pending command takes effect, if one does."""
        return self.pending[0][0] if self.pending else None

    # -- physics ---------------------------------------------------------------
    def advance(self, now: float, dt: float) -> None:
        """Move the plant ``dt`` seconds forward, ending at ``now``."""
        while self.pending and self.pending[0][0] <= now:
            self._apply(now, self.pending.popleft()[1])
        spec = self.spec
        assert spec.slew is not None
        goal = self.target
        if self.start_at is not None:
            if now < self.start_at:
                goal = 0.0
            else:
                self.start_at = None
        lo, hi = self.envelope()
        goal = min(max(goal, lo), hi)
        step = spec.slew * dt
        before = self.power
        if goal > before:
            power = min(goal, before + step)
        else:
            power = max(goal, before - step)
        if abs(power) < spec.min_power and abs(goal) < spec.min_power:
            power = 0.0
        self.power = power
        self.travel += abs(power - before)
        self._energy(dt)

    def _energy(self, dt: float) -> None:
        """SoC bookkeeping; every Wh in or out is tallied (the energy-balance test adds them up)."""
        spec = self.spec
        one_way = math.sqrt(spec.efficiency)
        hours = dt / 3600.0
        p = self.power
        if p > 0:
            self.discharged_ac_wh += p * hours
            self.soc_wh -= p / one_way * hours
        elif p < 0:
            self.charged_ac_wh += -p * hours
            self.soc_wh += -p * one_way * hours
        if self.soc_wh > 0:  # an empty battery is off: no standby draw
            standby = min(self.soc_wh, spec.standby * hours)
            self.standby_wh += standby
            self.soc_wh -= standby
        if self.soc_wh < 0:  # the envelope stops it at soc_min; a step may overrun 0 by a hair
            self.clipped_wh += self.soc_wh
            self.soc_wh = 0.0
        elif self.soc_wh > self.capacity:
            self.clipped_wh += self.soc_wh - self.capacity
            self.soc_wh = self.capacity

    @property
    def soc(self) -> float:
        return self.soc_wh / self.capacity
