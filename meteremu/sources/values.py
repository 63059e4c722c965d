"""Meter quantities shared by the Home Assistant and MQTT sources (pure).

Both sources name the same quantities with the same keys (``power`` or
``a/b/c_power``, ``*_power_export``, voltages, currents, pf, frequency,
``energy_import`` / ``energy_export``), convert published numbers exactly from
the same units, smooth power the same way and derive a phase from what is
known the same way. That is all here, once.

No reactor, no sockets, no client stacks: importing this module must stay
cheap (validating an MQTT config must not load the Home Assistant source).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from decimal import Decimal
from fractions import Fraction
from typing import Any, TypeVar

from meteremu.reading import PhaseReading

# -- units ------------------------------------------------------------------------

POWER = "power"
ENERGY = "energy"
VOLTAGE = "voltage"
CURRENT = "current"
FREQUENCY = "frequency"
POWER_FACTOR = "power_factor"

# Factors to the canonical unit of each kind: W, Wh, V, A, Hz, fraction (Home
# Assistant core's homeassistant/util/unit_conversion.py; 1 kWh = 3.6 MJ, 1 cal = 4.184 J).
UNITS: dict[str, dict[str | None, Fraction]] = {
    POWER: {"mW": Fraction(1, 1000), "W": Fraction(1), "kW": Fraction(1000),
            "MW": Fraction(10**6), "GW": Fraction(10**9), "TW": Fraction(10**12),
            "BTU/h": Fraction("0.29307107")},
    ENERGY: {"mWh": Fraction(1, 1000), "Wh": Fraction(1), "kWh": Fraction(1000),
             "MWh": Fraction(10**6), "GWh": Fraction(10**9), "TWh": Fraction(10**12),
             "J": Fraction(1, 3600), "kJ": Fraction(1000, 3600), "MJ": Fraction(10**6, 3600),
             "GJ": Fraction(10**9, 3600),
             "cal": Fraction("4.184") / 3600, "kcal": Fraction("4184") / 3600,
             "Mcal": Fraction("4184000") / 3600, "Gcal": Fraction("4184000000") / 3600},
    VOLTAGE: {"µV": Fraction(1, 10**6), "μV": Fraction(1, 10**6), "mV": Fraction(1, 1000),
              "V": Fraction(1), "kV": Fraction(1000), "MV": Fraction(10**6)},
    CURRENT: {"mA": Fraction(1, 1000), "A": Fraction(1)},
    FREQUENCY: {"Hz": Fraction(1), "kHz": Fraction(1000), "MHz": Fraction(10**6),
                "GHz": Fraction(10**9)},
    POWER_FACTOR: {None: Fraction(1), "": Fraction(1), "%": Fraction(1, 100)},
}

DEFAULT_UNIT: dict[str, str | None] = {POWER: "W", ENERGY: "Wh", VOLTAGE: "V", CURRENT: "A",
                                       FREQUENCY: "Hz", POWER_FACTOR: None}
"""The canonical unit of each kind (what a number without a unit is taken to be in)."""

MAX_EXPONENT = 30
"""Numbers beyond 10^±30 are not meter values (and would be costly to convert exactly)."""


def out_of_range(number: Decimal) -> bool:
    """True for a non-zero number beyond 10^±:data:`MAX_EXPONENT`.

    Check this before ``Fraction(number)``: ``1e999999999`` would make Fraction
    build a billion-digit integer (blocking the reactor for hours), and a
    number beyond float range would raise OverflowError in ``float()``.
    """
    return bool(number) and not -MAX_EXPONENT <= number.adjusted() <= MAX_EXPONENT


# -- quantity keys --------------------------------------------------------------------

PHASES = ("a", "b", "c")
KEY_KIND: dict[str, str] = {"power": POWER, "power_export": POWER, "frequency": FREQUENCY,
                            "energy_import": ENERGY, "energy_export": ENERGY}
for _p in PHASES:
    KEY_KIND.update({f"{_p}_power": POWER, f"{_p}_power_export": POWER, f"{_p}_voltage": VOLTAGE,
                     f"{_p}_current": CURRENT, f"{_p}_pf": POWER_FACTOR})
REQUIRED_KEYS = frozenset(k for k in KEY_KIND if k.endswith("power") or k.endswith("power_export"))
"""Power values: the meter is not served before each has a value, and is down when one is unavailable."""

COUNTER_KEYS = ("energy_import", "energy_export")
"""Lifetime counters: several (tariffs) may be given, and are summed."""

_KEY_DOCS: dict[str, str] = {
    "power": "total grid power, placed on phase A (B and C read 0)",
    "power_export": "total export power (positive); power is then the import",
    **{f"{p}_power": f"phase {p.upper()} power" for p in PHASES},
    **{f"{p}_power_export": f"phase {p.upper()} export power" for p in PHASES},
    "energy_import": "lifetime import counter(s); several (tariffs) are summed",
    "energy_export": "lifetime export counter(s); several (tariffs) are summed",
}
KEYS: tuple[str, ...] = (
    "power", "power_export", *(f"{p}_power" for p in PHASES), *(f"{p}_power_export" for p in PHASES),
    *(f"{p}_{q}" for q in ("voltage", "current", "pf") for p in PHASES),
    "frequency", *COUNTER_KEYS)
"""Every quantity key, in the documented order (the fields of the sources' options)."""

_C = TypeVar("_C", bound=type)


def quantity_fields(item: Any) -> Callable[[_C], _C]:
    """Class decorator (below ``@dataclass``): one optional field per quantity key.

    ``item`` is the type of one key's source (an entity id, a topic…); the
    counters also take a tuple of them. Keys and docs are the same for every
    source, so the documented YAML keys cannot drift apart.
    """

    def add(cls: _C) -> _C:
        annotations = cls.__dict__.get("__annotations__", {})
        for key in KEYS:
            kind = item | tuple[item, ...] if key in COUNTER_KEYS else item
            annotations[key] = kind | None
            doc = _KEY_DOCS.get(key)
            setattr(cls, key, field(default=None, metadata={"doc": doc} if doc else {}))
        cls.__annotations__ = annotations
        return cls

    return add


def unit_factor(kind: str, unit: str | None) -> Fraction:
    """The factor from ``unit`` to the canonical unit of ``kind``; ``ValueError`` if unknown."""
    factors = UNITS[kind]
    if unit not in factors:
        known = ", ".join(u for u in factors if u)
        raise ValueError(f"a {kind} unit ({known}); got {unit!r}")
    return factors[unit]


def scale_errors(scale: float) -> list[tuple[str, str]]:
    """A value's ``scale`` must be a finite number other than 0 (0 would serve 0 W for anything)."""
    if not math.isfinite(scale) or scale == 0:
        return [("scale", "a finite number other than 0")]
    return []


def unit_errors(key: str, unit: str | None, where: str) -> list[tuple[str, str]]:
    """A configured ``unit`` must be one of the quantity's units (``where.unit`` names it)."""
    if unit is None:
        return []
    try:
        unit_factor(KEY_KIND[key], unit)
    except ValueError as err:
        return [(f"{where}.unit", str(err))]
    return []


def value_items(values: Any) -> list[tuple[str, int, Any]]:
    """``(key, index, item)`` of every configured quantity of a ``@quantity_fields`` dataclass.

    ``index`` is the position in a counter's tuple (tariffs), 0 otherwise.
    """
    out: list[tuple[str, int, Any]] = []
    for f in dataclass_fields(values):
        value = getattr(values, f.name)
        if value is None:
            continue
        for index, item in enumerate(value if isinstance(value, tuple) else (value,)):
            out.append((f.name, index, item))
    return out


def value_where(values: Any, key: str, index: int) -> str:
    """The config key of one item: ``energy_import[1]`` in a tuple, else the key."""
    return f"{key}[{index}]" if isinstance(getattr(values, key), tuple) else key


def layout_errors(values: Any, noun: str) -> list[tuple[str, str]]:
    """The rules every ``values`` mapping shares: counters not empty, the power keys (see
    :func:`power_key_errors`), and at least one power value."""
    configured = {f.name: getattr(values, f.name) for f in dataclass_fields(values)}
    errors = [(key, f"at least one {noun} (or leave it out)") for key in COUNTER_KEYS
              if isinstance(configured[key], tuple) and not configured[key]]
    errors += power_key_errors(configured, "value")
    if not has_power_key(configured):
        errors.append(("power", "a power value (power, or a_power/b_power/c_power)"))
    return errors


def power_key_errors(configured: Mapping[str, Any], noun: str) -> list[tuple[str, str]]:
    """The rules of the power keys (``noun``: "entity", "value"), as validate() errors."""
    errors: list[tuple[str, str]] = []
    if configured.get("power") and any(configured.get(f"{p}_power") for p in PHASES):
        errors.append(("power", "either power (a total) or a_power/b_power/c_power, not both"))
    if configured.get("power_export") and not configured.get("power"):
        errors.append(("power_export", f"power as well (the import {noun})"))
    for p in PHASES:
        if configured.get(f"{p}_power_export") and not configured.get(f"{p}_power"):
            errors.append((f"{p}_power_export", f"{p}_power as well (the import {noun})"))
    return errors


def has_power_key(configured: Mapping[str, Any]) -> bool:
    return bool(configured.get("power") or any(configured.get(f"{p}_power") for p in PHASES))


# -- smoothing --------------------------------------------------------------------


@dataclass(frozen=True)
class Smoothing:
    """Either a moving average over ``window`` samples or an EMA with ``alpha``."""

    window: int | None = field(default=None, metadata={"doc": "moving average over N samples"})
    alpha: float | None = field(default=None, metadata={"doc": "exponential moving average weight"})

    def validate(self) -> list[tuple[str, str]]:
        if (self.window is None) == (self.alpha is None):
            return [("window", "exactly one of window (moving average) or alpha (EMA)")]
        if self.window is not None and not 1 <= self.window <= 1000:
            return [("window", "a number of samples from 1 to 1000")]
        if self.alpha is not None and not 0 < self.alpha <= 1:
            return [("alpha", "a weight greater than 0 and at most 1")]
        return []



class Smoother:
    """Moving average over ``window`` samples, or EMA with weight ``alpha``, per key."""

    def __init__(self, window: int | None = None, alpha: float | None = None) -> None:
        self.window, self.alpha = window, alpha
        self._windows: dict[Hashable, deque[float]] = {}
        self._ema: dict[Hashable, float] = {}

    def __call__(self, key: Hashable, value: float) -> float:
        if self.window is not None:
            window = self._windows.setdefault(key, deque(maxlen=self.window))
            window.append(value)
            return sum(window) / len(window)
        if self.alpha is not None:
            previous = self._ema.get(key)
            smoothed = value if previous is None else self.alpha * value + (1 - self.alpha) * previous
            self._ema[key] = smoothed
            return smoothed
        return value

    def reset(self, key: Hashable) -> None:
        self._windows.pop(key, None)
        self._ema.pop(key, None)

    @classmethod
    def from_options(cls, options: Smoothing | None) -> Smoother:
        """The smoother a source's ``smoothing`` option asks for (none: values pass through)."""
        return cls(options.window, options.alpha) if options else cls()


# -- building readings -------------------------------------------------------------------


def build_phase(power: float, voltage: float | None, current: float | None, pf: float | None,
                freq: float | None) -> PhaseReading:
    """One phase from what is known; the rest is derived consistently.

    With a measured current, apparent power is V×I, raised to |P| if the
    published (often averaged) values disagree, so that |pf| ≤ 1 always holds.
    """
    volts = voltage if voltage is not None and voltage > 0 else 230.0
    hertz = freq if freq is not None and freq > 0 else 50.0
    if current is None:
        return PhaseReading.from_power(power, voltage=volts, pf=abs(pf) if pf else 1.0, freq=hertz)
    aprt = max(volts * abs(current), abs(power))
    if pf is not None and power:
        factor = min(1.0, abs(pf))
    else:
        factor = abs(power) / aprt if aprt else 0.0
    signed_pf = factor if power >= 0 else -factor
    return PhaseReading(voltage=volts, current=aprt / volts, act_power=power, aprt_power=aprt,
                        pf=signed_pf if power else 0.0, freq=hertz)


def phase_power(keys: Collection[str], value: Callable[[str], float | None], phase: str,
                invert: bool) -> float:
    """Signed power of ``phase``: a total goes on phase A; an export value is subtracted."""
    if phase == "a" and "power" in keys:
        power = (value("power") or 0.0) - (value("power_export") or 0.0)
    else:
        power = (value(f"{phase}_power") or 0.0) - (value(f"{phase}_power_export") or 0.0)
    return -power if invert else power


def reading_parts(keys: Collection[str], value: Callable[[str], float | None], invert: bool
                  ) -> tuple[tuple[PhaseReading, ...], tuple[tuple[float, float], ...] | None]:
    """A Reading's ``phases`` and ``energy`` from the latest value of each configured key.

    ``keys`` are the configured keys, ``value(key)`` their value (None while
    unknown). As many phases as the keys speak of (at least one); the energy
    counters (totals, on phase A) once every configured counter has a value.
    """
    count = max([1] + [i + 1 for i, p in enumerate(PHASES) if any(k.startswith(f"{p}_") for k in keys)])
    freq = value("frequency")
    phases = tuple(build_phase(phase_power(keys, value, p, invert), value(f"{p}_voltage"),
                               value(f"{p}_current"), value(f"{p}_pf"), freq) for p in PHASES[:count])
    energy = None
    if "energy_import" in keys or "energy_export" in keys:
        imp, exp = value("energy_import"), value("energy_export")
        if ("energy_import" not in keys or imp is not None) and ("energy_export" not in keys or exp is not None):
            energy = ((imp or 0.0, exp or 0.0),) + ((0.0, 0.0),) * (count - 1)
    return phases, energy


def next_measured_at(stamps: list[float], last: float | None) -> float:
    """The newest sample time, nudged 1 ms past ``last`` when it is not later."""
    measured_at = max(stamps)
    if last is not None and measured_at <= last:
        measured_at = last + 0.001
    return measured_at
