"""Immutable measurement values handed from sources to meters.

Sign convention (design.md §4): ``act_power`` is positive while importing from
the grid and negative while exporting. Units are W, V, A, VA, Hz.

A Reading may have zero phases (a heat meter has none) and may carry
``extras``: named values that are not electrical phase data (gas m³, heat
energy, inverter watts…), which exporters publish as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

PHASE_NAMES = ("a", "b", "c")

_EMPTY: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PhaseReading:
    """One phase at one instant. ``act_power`` is signed; the rest are not."""

    voltage: float
    current: float
    act_power: float
    aprt_power: float
    pf: float
    freq: float

    @classmethod
    def from_power(
        cls,
        act_power: float,
        voltage: float = 230.0,
        pf: float = 1.0,
        freq: float = 50.0,
    ) -> PhaseReading:
        """Derive current and apparent power consistently from P, U and pf.

        Sources that only know active power (and maybe voltage) use this so
        that ``aprt_power == voltage * current`` and ``|pf| <= 1`` always hold.
        The pf sign follows the active power, as it does on most meters.
        A voltage below 1 V counts as no voltage (current 0.0), and finite
        inputs never give non-finite outputs.
        """
        if not math.isfinite(pf):
            pf = 1.0
        pf_abs = min(1.0, max(abs(pf), 0.05)) if act_power else 1.0
        aprt = abs(act_power) / pf_abs
        if not math.isfinite(aprt) and math.isfinite(act_power):
            # |P| / pf overflowed (|P| near float max): keep the invariant
            # aprt >= |P| with the largest finite value instead of inf.
            pf_abs, aprt = 1.0, abs(act_power)
        # Below 1 V there is no usable voltage (a sensor glitch, or 1e-306):
        # dividing by it would give an absurd or infinite current.
        current = aprt / voltage if voltage >= 1.0 else 0.0
        if not math.isfinite(current) and math.isfinite(aprt):
            current = 0.0
        signed_pf = math.copysign(pf_abs, act_power) if act_power else 0.0
        return cls(
            voltage=voltage,
            current=current,
            act_power=act_power,
            aprt_power=aprt,
            pf=signed_pf,
            freq=freq,
        )


ZERO_PHASE = PhaseReading(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Reading:
    """Everything a source knows at one instant.

    ``measured_at`` is the source's own timestamp (epoch seconds); it is kept
    for display/export and decides whether a sample is *new*. Freshness is
    judged on arrival by the Meter, never on this value.

    ``energy`` is the source's own lifetime counters per phase as
    ``(import_wh, export_wh)`` pairs, when it has them (Envoy, DSMR); the Meter
    then follows them instead of integrating power.
    """

    phases: tuple[PhaseReading, ...]
    measured_at: float
    energy: tuple[tuple[float, float], ...] | None = None
    extras: Mapping[str, float] = field(default_factory=lambda: _EMPTY)

    def phase(self, index: int) -> PhaseReading:
        """Phase ``index``; phases the meter does not have read as zero."""
        return self.phases[index] if index < len(self.phases) else ZERO_PHASE

    @property
    def total_act_power(self) -> float:
        return sum(p.act_power for p in self.phases)

    @property
    def total_aprt_power(self) -> float:
        return sum(p.aprt_power for p in self.phases)

    @property
    def total_current(self) -> float:
        return sum(p.current for p in self.phases)

    def powers(self) -> tuple[float, ...]:
        return tuple(p.act_power for p in self.phases)
