"""Energy integration against closed-form answers, and the Meter's gap rule."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.energy import EnergyCounters, segment_energy
from meteremu.meter import Meter
from meteremu.reading import PhaseReading, Reading


def reading(t: float, *powers: float) -> Reading:
    return Reading(tuple(PhaseReading.from_power(p) for p in powers), measured_at=t)


class SegmentTests(SynchronousTestCase):
    def test_constant_import(self):
        self.assertEqual(segment_energy(1000, 1000, 3600), (1000.0, 0.0))

    def test_constant_export(self):
        self.assertEqual(segment_energy(-500, -500, 7200), (0.0, 1000.0))

    def test_ramp_is_trapezoid(self):
        imp, exp = segment_energy(0, 2000, 3600)
        self.assertAlmostEqual(imp, 1000.0)
        self.assertEqual(exp, 0.0)

    def test_sign_change_is_split_at_the_crossing(self):
        # -1 kW → +1 kW over 2 h: a triangle of 500 Wh each side, not a net 0.
        imp, exp = segment_energy(-1000, 1000, 7200)
        self.assertAlmostEqual(imp, 500.0)
        self.assertAlmostEqual(exp, 500.0)
        # +3 kW → -1 kW over 4 h: crossing after 3 h; 4.5 kWh in, 0.5 kWh out.
        imp, exp = segment_energy(3000, -1000, 4 * 3600)
        self.assertAlmostEqual(imp, 4500.0)
        self.assertAlmostEqual(exp, 500.0)

    def test_no_time_no_energy(self):
        self.assertEqual(segment_energy(1000, 1000, 0), (0.0, 0.0))
        self.assertEqual(segment_energy(1000, 1000, -5), (0.0, 0.0))


class CountersTests(SynchronousTestCase):
    def test_sine_day_closed_form(self):
        # p(t) = 1000 sin(2πt/T) over one period: ∫ positive half = T·1000/π (in W·s).
        import math

        counters = EnergyCounters(1)
        period, steps = 86400.0, 8640
        dt = period / steps
        for k in range(steps):
            p0 = 1000 * math.sin(2 * math.pi * k * dt / period)
            p1 = 1000 * math.sin(2 * math.pi * (k + 1) * dt / period)
            counters.add_segment([p0], [p1], dt)
        expected = period * 1000 / math.pi / 3600
        # trial's assertAlmostEqual has no delta: compare the relative error.
        self.assertLess(abs(counters.phases[0].import_wh - expected) / expected, 1e-4)
        self.assertLess(abs(counters.phases[0].export_wh - expected) / expected, 1e-4)

    def test_follow_never_decreases(self):
        counters = EnergyCounters(2)
        counters.follow([(100.0, 5.0), (50.0, 0.0)])
        counters.follow([(90.0, 6.0), (60.0, 0.0)])  # a glitching source counter
        self.assertEqual(counters.to_dict(), {"phases": [[100.0, 6.0], [60.0, 0.0]]})

    def test_round_trip(self):
        counters = EnergyCounters()
        counters.add_segment([100, -100, 0], [100, -100, 0], 3600)
        restored = EnergyCounters()
        restored.restore(counters.to_dict())
        self.assertEqual(restored.to_dict(), counters.to_dict())
        self.assertEqual(restored.total_import_wh, 100.0)
        self.assertEqual(restored.total_export_wh, 100.0)


class MeterEnergyTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.meter = Meter("grid", self.clock, stale_after=5)

    def feed(self, t: float, *powers: float) -> None:
        self.clock.advance(t - self.clock.seconds())
        self.meter.update(reading(t, *powers))

    def test_integrates_between_samples(self):
        self.feed(1, 3600, -3600, 0)
        self.feed(2, 3600, -3600, 0)
        self.feed(3, 3600, -3600, 0)
        a, b, c = self.meter.energy.phases
        self.assertAlmostEqual(a.import_wh, 2.0)
        self.assertAlmostEqual(b.export_wh, 2.0)
        self.assertEqual((a.export_wh, b.import_wh, c.import_wh, c.export_wh), (0, 0, 0, 0))

    def test_gap_longer_than_stale_after_is_not_integrated(self):
        self.feed(1, 3600, 0, 0)
        self.feed(2, 3600, 0, 0)
        self.feed(100, 3600, 0, 0)  # 98 s of silence: unknown, not 98 s × 3.6 kW
        self.assertAlmostEqual(self.meter.energy.phases[0].import_wh, 1.0)
        self.feed(101, 3600, 0, 0)  # integration resumes after the gap
        self.assertAlmostEqual(self.meter.energy.phases[0].import_wh, 2.0)

    def test_repeated_sample_is_not_new(self):
        self.feed(1, 1000, 0, 0)
        self.clock.advance(1)
        self.assertFalse(self.meter.update(reading(1, 5000, 0, 0)))
        self.assertEqual(self.meter.latest.phases[0].act_power, 1000)
        self.assertEqual(self.meter.energy.total_import_wh, 0)

    def test_source_counters_are_followed(self):
        self.feed(1, 100, 0, 0)
        r = Reading(reading(2, 100, 0, 0).phases, 2, energy=((5000.0, 1.0), (0.0, 0.0), (0.0, 0.0)))
        self.clock.advance(1)
        self.meter.update(r)
        self.assertEqual(self.meter.energy.phases[0].import_wh, 5000.0)
