"""What the unit and integration tests of influxdb share (helpers, data)."""

from __future__ import annotations

from meteremu.meter import Meter
from meteremu.reading import PhaseReading, Reading

# 2024-03-31 is a 23-hour day in Amsterdam (CET → CEST at 02:00).
MAR30_2200 = 1711832400.0  # 2024-03-30 22:00 CET


MAR31_0000 = 1711839600.0  # 2024-03-31 00:00 CET


PASSWORD = "pw-SECRET-5f1e"


TOKEN = "tok-SECRET-9a3c"


def three_phase(t: float, powers: tuple[float, float, float] = (1200.0, -300.5, 45.25),
                extras: dict[str, float] | None = None) -> Reading:
    return Reading(
        phases=tuple(PhaseReading.from_power(p, voltage=v, pf=0.9) for p, v in zip(powers, (230.0, 231.5, 229.0),
                                                                                       strict=True)),
        measured_at=t,
        extras=extras or {},
    )


def set_counters(meter: Meter, *pairs: tuple[float, float]) -> None:
    for counter, (imp, exp) in zip(meter.energy.phases, pairs, strict=True):
        counter.import_wh, counter.export_wh = imp, exp
