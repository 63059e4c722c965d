"""Tests for meteremu.sources.simulator.

Everything runs in an explicit time zone (UTC, or a fixed offset) so results do
not depend on where the tests run; one test checks that ``tz=None`` follows the
process's local time zone via ``TZ``.
"""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime, timedelta, timezone

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.meter import Freshness, Meter
from meteremu.reading import Reading
from meteremu.sources.simulator import (
    Household,
    OutageOptions,
    SimulatorOptions,
    SimulatorSource,
    parse_start_time,
)

DAY0 = datetime(2024, 6, 1, tzinfo=UTC).timestamp()  # a Saturday in summer, midnight UTC


def at(hours: float, day: int = 0) -> float:
    return DAY0 + day * 86400 + hours * 3600


class HouseholdTests(SynchronousTestCase):
    def test_same_seed_same_readings_in_any_order(self) -> None:
        times = [at(h) for h in (0.5, 7.25, 12.0, 18.6, 23.99)] + [at(3, day=40)]
        first = Household(SimulatorOptions(seed=7), UTC)
        forward = [first.reading_at(t) for t in times]
        second = Household(SimulatorOptions(seed=7), UTC)
        backward = [second.reading_at(t) for t in reversed(times)]
        self.assertEqual(forward, list(reversed(backward)))

    def test_different_seed_differs(self) -> None:
        one = Household(SimulatorOptions(seed=1), UTC)
        two = Household(SimulatorOptions(seed=2), UTC)
        times = [at(h / 4) for h in range(96)]
        self.assertNotEqual([one.reading_at(t) for t in times], [two.reading_at(t) for t in times])

    def test_exports_at_noon(self) -> None:
        self.assertLess(Household(SimulatorOptions(), UTC).reading_at(at(12)).total_act_power, -500)
        for seed in range(1, 11):
            house = Household(SimulatorOptions(seed=seed), UTC)
            hour = [house.reading_at(at(12, day=seed) + m * 60).total_act_power for m in range(60)]
            self.assertLess(sum(hour) / len(hour), -1000, f"seed {seed}")

    def test_imports_at_night_without_pv(self) -> None:
        house = Household(SimulatorOptions(), UTC)
        self.assertGreater(house.reading_at(at(22)).total_act_power, 0)
        self.assertEqual(house.pv_power(at(0)), 0.0)
        self.assertEqual(house.reading_at(at(0)).extras["pv_power"], 0.0)
        self.assertGreater(house.pv_power(at(13)), 0.0)

    def test_no_pv_never_exports(self) -> None:
        house = Household(SimulatorOptions(pv_peak=0), UTC)
        for minute in range(0, 24 * 60, 5):
            reading = house.reading_at(at(minute / 60))
            for phase in reading.phases:
                self.assertGreaterEqual(phase.act_power, 0.0)

    def test_base_load_is_a_floor(self) -> None:
        for base in (250.0, 1000.0):
            house = Household(SimulatorOptions(base_load=base), UTC)
            night = [house.reading_at(at(m / 60)).total_act_power for m in range(0, 300, 3)]
            self.assertGreaterEqual(min(night), base * 0.8)

    def test_base_load_split_is_not_equal_thirds(self) -> None:
        reading = Household(SimulatorOptions(pv_peak=0), UTC).reading_at(at(3))
        powers = reading.powers()
        self.assertGreater(abs(powers[0] - powers[2]), 20)

    def test_appliance_events_happen(self) -> None:
        house = Household(SimulatorOptions(), UTC)
        peak = max(
            max(house.reading_at(at(s / 3600)).powers()) for s in range(0, 86400, 30)
        )
        self.assertGreater(peak, 1500)

    def test_physically_consistent(self) -> None:
        house = Household(SimulatorOptions(seed=3), UTC)
        for step in range(0, 2 * 86400, 97):
            for phase in house.reading_at(at(0) + step).phases:
                self.assertApproximates(phase.aprt_power, phase.voltage * phase.current, 0.01 * phase.aprt_power + 1e-9)
                self.assertLessEqual(abs(phase.pf), 1.0)
                self.assertGreaterEqual(phase.aprt_power, abs(phase.act_power) - 1e-9)
                self.assertApproximates(phase.pf * phase.aprt_power, phase.act_power, 1e-6)
                self.assertTrue(49.9 <= phase.freq <= 50.1, phase.freq)
                self.assertTrue(220 <= phase.voltage <= 240, phase.voltage)

    def test_loads_have_a_realistic_power_factor(self) -> None:
        house = Household(SimulatorOptions(pv_peak=0), UTC)
        for step in range(0, 86400, 301):
            for phase in house.reading_at(at(0) + step).phases:
                self.assertTrue(0.85 <= phase.pf <= 1.0, phase.pf)

    def test_local_time_follows_tz_environment(self) -> None:
        old = os.environ.get("TZ")

        def restore() -> None:
            if old is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = old
            time.tzset()

        self.addCleanup(restore)
        os.environ["TZ"] = "XXX-9"  # POSIX form, needs no tz database: UTC+9
        time.tzset()
        noon_there = at(3)  # 03:00 UTC is 12:00 at UTC+9
        local = Household(SimulatorOptions()).reading_at(noon_there)
        explicit = Household(SimulatorOptions(), timezone(timedelta(hours=9))).reading_at(noon_there)
        self.assertEqual(local, explicit)
        self.assertLess(local.total_act_power, 0)


class StartTimeTests(SynchronousTestCase):
    now = at(5.5)

    def test_time_of_day_is_today(self) -> None:
        self.assertEqual(parse_start_time("12:00", self.now, UTC), at(12))
        self.assertEqual(parse_start_time("12:00:30", self.now, UTC), at(12) + 30)
        self.assertEqual(parse_start_time(" 00:00 ", self.now, UTC), at(0))

    def test_time_of_day_in_another_zone(self) -> None:
        plus2 = timezone(timedelta(hours=2))
        self.assertEqual(parse_start_time("12:00", self.now, plus2), at(10))

    def test_iso_datetime(self) -> None:
        self.assertEqual(parse_start_time("2024-06-03T12:00:00+00:00", self.now, UTC), at(12, 2))
        self.assertEqual(parse_start_time("2024-06-03T14:00:00+02:00", self.now, UTC), at(12, 2))
        self.assertEqual(parse_start_time("2024-06-03T12:00", self.now, UTC), at(12, 2))

    def test_none_is_now(self) -> None:
        self.assertEqual(parse_start_time(None, self.now, UTC), self.now)

    def test_invalid(self) -> None:
        for bad in ("noon", "25:00", "12:60", "12:0", "12", "", "2024-13-01T00:00"):
            self.assertRaises(ValueError, parse_start_time, bad, self.now, UTC)
        # YAML reads an unquoted 12:00 as the sexagesimal number 720
        self.assertRaises(ValueError, parse_start_time, 720, self.now, UTC)


class ValidateTests(SynchronousTestCase):
    def fields(self, **kwargs: object) -> list[str]:
        return [name for name, _ in SimulatorOptions(**kwargs).validate()]  # type: ignore[arg-type]

    def test_defaults_are_valid(self) -> None:
        self.assertEqual(SimulatorOptions().validate(), [])
        self.assertEqual(self.fields(start_time="12:00:30", speed=60,
                                     outages=OutageOptions(every=600, duration=30)), [])

    def test_errors_name_the_field(self) -> None:
        self.assertEqual(self.fields(speed=0), ["speed"])
        self.assertEqual(self.fields(speed=-1), ["speed"])
        self.assertEqual(self.fields(speed=math.inf), ["speed"])
        self.assertEqual(self.fields(interval=0), ["interval"])
        self.assertEqual(self.fields(base_load=-5), ["base_load"])
        self.assertEqual(self.fields(pv_peak=-1), ["pv_peak"])
        self.assertEqual(self.fields(start_time="noon"), ["start_time"])
        self.assertEqual(self.fields(start_time=720), ["start_time"])
        self.assertEqual(self.fields(outages=OutageOptions(every=10, duration=10)),
                         ["outages.duration"])
        self.assertEqual(self.fields(outages=OutageOptions(every=0, duration=0)),
                         ["outages.every", "outages.duration"])
        self.assertEqual(self.fields(speed=0, interval=-1), ["interval", "speed"])

    def test_errors_say_what_was_expected(self) -> None:
        ((_, why),) = SimulatorOptions(speed=0).validate()
        self.assertIn("greater than 0", why)


class SourceTests(SynchronousTestCase):
    def make(self, stale_after: float = 5.0, **kwargs: object) -> tuple[Clock, Meter, SimulatorSource, list[float]]:
        clock = Clock()
        clock.advance(at(3))  # real clock: 03:00 UTC
        meter = Meter("grid", clock, stale_after=stale_after, source_type="simulator")
        arrivals: list[float] = []
        meter.add_listener(lambda m, r: arrivals.append(clock.seconds()))
        source = SimulatorSource(meter, SimulatorOptions(**kwargs), clock, tz=UTC)  # type: ignore[arg-type]
        source.startService()
        self.addCleanup(lambda: source.running and source.stopService())
        return clock, meter, source, arrivals

    def test_first_reading_at_once_at_start_time(self) -> None:
        clock, meter, source, arrivals = self.make(start_time="12:00")
        self.assertEqual(arrivals, [clock.seconds()])
        assert meter.latest is not None
        self.assertEqual(meter.latest.measured_at, at(12))
        self.assertLess(meter.latest.total_act_power, 0)
        self.assertEqual(meter.freshness(), Freshness.FRESH)

    def test_default_start_is_now(self) -> None:
        clock, meter, source, arrivals = self.make()
        assert meter.latest is not None
        self.assertEqual(meter.latest.measured_at, at(3))

    def test_interval_is_real_time(self) -> None:
        clock, meter, source, arrivals = self.make(interval=2.0)
        clock.pump([1.0] * 10)
        self.assertEqual(len(arrivals), 6)
        assert meter.latest is not None
        self.assertEqual(meter.latest.measured_at, at(3) + 10)

    def test_speed_runs_simulated_time_faster(self) -> None:
        clock, meter, source, arrivals = self.make(speed=60, start_time="11:00")
        stamps: list[float] = []
        meter.add_listener(lambda m, r: stamps.append(r.measured_at))
        clock.pump([1.0] * 10)
        self.assertEqual(len(arrivals), 11)
        self.assertApproximates(stamps[-1] - at(11), 600, 1e-6)
        self.assertEqual([round(b - a, 6) for a, b in zip(stamps, stamps[1:], strict=False)], [60.0] * 9)

    def test_outage_goes_silent_then_recovers(self) -> None:
        clock, meter, source, arrivals = self.make(
            stale_after=2.0, outages=OutageOptions(every=10, duration=3))
        start = clock.seconds()
        states = {}
        for _ in range(25):
            clock.advance(1)
            states[round(clock.seconds() - start)] = meter.freshness()
        got = sorted(round(t - start) for t in arrivals)
        expected = [s for s in range(26) if s not in (10, 11, 12, 20, 21, 22)]
        self.assertEqual(got, expected)
        self.assertEqual(states[9], Freshness.FRESH)
        self.assertEqual(states[12], Freshness.STALE)
        self.assertEqual(states[13], Freshness.FRESH)
        self.assertEqual(states[22], Freshness.STALE)
        self.assertEqual(meter.stats.failures, 0)  # silence is not a failure

    def test_loop_survives_an_exception(self) -> None:
        clock, meter, source, arrivals = self.make()
        real = source.household.reading_at
        calls = []

        def flaky(t: float) -> Reading:
            calls.append(t)
            if len(calls) == 1:
                raise RuntimeError("boom")
            return real(t)

        source.household.reading_at = flaky  # type: ignore[method-assign]
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(arrivals), 2)  # the start tick and the one after the failure
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(meter.stats.failures, 1)
        self.assertIn("boom", meter.stats.last_error or "")
        self.assertEqual(meter.freshness(), Freshness.FRESH)  # a soft failure only

    def test_one_big_advance_still_uses_the_simulated_clock(self) -> None:
        clock, meter, source, arrivals = self.make(speed=60, start_time="11:00")
        clock.advance(10)  # a LoopingCall skips missed ticks, but the timestamp is right
        assert meter.latest is not None
        self.assertApproximates(meter.latest.measured_at - at(11), 600, 1e-6)

    def test_stop_stops_the_loop(self) -> None:
        clock, meter, source, arrivals = self.make()
        source.stopService()
        clock.advance(10)
        self.assertEqual(len(arrivals), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_type_name(self) -> None:
        self.assertEqual(SimulatorSource.type_name, "simulator")
