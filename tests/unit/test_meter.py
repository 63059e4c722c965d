"""Meter freshness (design.md §4), listeners, history, stats."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.meter import Freshness, Meter, default_stale_after
from meteremu.reading import PhaseReading, Reading


def reading(t: float, p: float = 100.0) -> Reading:
    return Reading((PhaseReading.from_power(p),), measured_at=t)


class FreshnessTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.meter = Meter("grid", self.clock, stale_after=5)

    def test_no_reading_yet_is_stale(self):
        self.assertIs(self.meter.freshness(), Freshness.STALE)
        self.assertIsNone(self.meter.age())

    def test_fresh_then_stale(self):
        self.meter.update(reading(1))
        self.assertIs(self.meter.freshness(), Freshness.FRESH)
        self.clock.advance(5)
        self.assertIs(self.meter.freshness(), Freshness.FRESH)
        self.clock.advance(0.1)
        self.assertIs(self.meter.freshness(), Freshness.STALE)
        self.assertAlmostEqual(self.meter.age(), 5.1)

    def test_repeats_do_not_refresh_a_polled_meter(self):
        self.meter.update(reading(1))
        for _ in range(10):
            self.clock.advance(1)
            self.meter.update(reading(1))  # the poll returns the same sample
        self.assertIs(self.meter.freshness(), Freshness.STALE)
        self.assertEqual(self.meter.stats.fetches, 11)

    def test_push_source_alive_keeps_a_steady_value_fresh(self):
        self.meter.update(reading(1))
        for _ in range(10):
            self.clock.advance(4)
            self.meter.alive()
        self.assertIs(self.meter.freshness(), Freshness.FRESH)
        self.assertAlmostEqual(self.meter.age(), 40)

    def test_failure_is_down_until_a_new_reading(self):
        self.meter.update(reading(1))
        self.meter.report_failure("timeout")
        self.assertIs(self.meter.freshness(), Freshness.DOWN)
        self.assertEqual(self.meter.down_reason, "timeout")
        self.assertEqual(self.meter.stats.failures, 1)
        self.assertEqual(self.meter.stats.success_rate, 0.5)
        self.clock.advance(1)
        self.meter.update(reading(2))
        self.assertIs(self.meter.freshness(), Freshness.FRESH)
        self.assertEqual(self.meter.stats.last_error, "timeout")  # kept for /healthz

    def test_push_source_recovers_without_a_new_value(self):
        self.meter.update(reading(1))
        self.meter.report_failure("connection lost")
        self.assertIs(self.meter.freshness(), Freshness.DOWN)
        self.clock.advance(2)
        self.meter.alive()  # reconnected; the value is the same as before
        self.assertIs(self.meter.freshness(), Freshness.FRESH)

    def test_soft_failure_only_counts(self):
        self.meter.update(reading(1))
        self.meter.report_failure("one bad sample", down=False)
        self.assertIs(self.meter.freshness(), Freshness.FRESH)

    def test_default_stale_after(self):
        self.assertEqual(default_stale_after(1.0), 5.0)
        self.assertEqual(default_stale_after(2.0), 6.0)
        self.assertEqual(default_stale_after(10.0), 30.0)
        self.assertEqual(default_stale_after(1.0, push=True), 60.0)


class ListenerTests(SynchronousTestCase):
    def test_listeners_and_history(self):
        clock = Clock()
        meter = Meter("grid", clock, stale_after=5, history_size=3)
        seen = []
        listener = lambda m, r: seen.append(r.measured_at)  # noqa: E731
        meter.add_listener(listener)
        for t in range(1, 6):
            clock.advance(1)
            meter.update(reading(t, p=t * 10))
        meter.update(reading(5))  # a repeat tells nobody
        self.assertEqual(seen, [1, 2, 3, 4, 5])
        self.assertEqual(list(meter.history), [(3, 30.0), (4, 40.0), (5, 50.0)])
        meter.remove_listener(listener)
        clock.advance(1)
        meter.update(reading(6))
        self.assertEqual(seen, [1, 2, 3, 4, 5])

    def test_a_failing_listener_does_not_silence_the_others(self):
        clock = Clock()
        meter = Meter("grid", clock, stale_after=5)
        seen: list[float] = []

        def broken(m: Meter, r: Reading) -> None:
            raise ZeroDivisionError("exporter bug")

        meter.add_listener(broken)
        meter.add_listener(lambda m, r: seen.append(r.measured_at))
        for t in (1, 2, 3):
            clock.advance(1)
            self.assertTrue(meter.update(reading(t)))  # the reading still counts as new
        self.assertEqual(seen, [1, 2, 3])
        self.assertEqual(meter.latest.measured_at, 3)
        self.assertEqual(meter.listener_errors, 3)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)  # logged once, then counted

    def test_missing_phases_read_as_zero(self):
        r = reading(1, 500)
        self.assertEqual(r.phase(2).act_power, 0.0)
        self.assertEqual(r.total_act_power, 500.0)
