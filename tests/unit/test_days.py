"""The day ledger: counters at local midnight, one owner for the dashboard and InfluxDB."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, parse_config
from meteremu.days import DayLedger, DayStart, legacy_day_start, since, store_key
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.store import MemoryValues

MAR1 = datetime(2024, 3, 1, tzinfo=UTC).timestamp()


def counters(meter: Meter, *pairs: tuple[float, float]) -> None:
    for phase, (imp, exp) in zip(meter.energy.phases, pairs, strict=False):
        phase.import_wh, phase.export_wh = imp, exp


class LedgerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(MAR1 + 15 * 3600)
        self.meters = MeterSet()
        self.meter = Meter("grid", self.clock)
        counters(self.meter, (100.0, 10.0))
        self.meters.add(self.meter)
        self.ended: list[tuple[str, date, Any, bool]] = []

    def ledger(self, store: MemoryValues | None = None) -> DayLedger:
        ledger = DayLedger(self.meters, store if store is not None else MemoryValues(), self.clock, UTC)
        ledger.subscribe(lambda m, start, end, complete: self.ended.append((m.name, start.day, end, complete)))
        ledger.startService()
        self.addCleanup(ledger.stopService)
        return ledger

    def test_a_day_ends_at_local_midnight_and_tells_subscribers(self) -> None:
        ledger = self.ledger()
        self.assertEqual(ledger.start_of_day(self.meter).day, date(2024, 3, 1))
        self.assertFalse(ledger.start_of_day(self.meter).complete)  # taken at 15:00
        counters(self.meter, (130.0, 12.0))
        self.assertEqual(ledger.today(self.meter)[0], (30.0, 2.0))
        self.clock.advance(MAR1 + 86400 - self.clock.seconds())
        self.assertEqual(self.ended, [("grid", date(2024, 3, 1), ((130.0, 12.0), (0.0, 0.0), (0.0, 0.0)), False)])
        start = ledger.start_of_day(self.meter)
        self.assertEqual((start.day, start.complete), (date(2024, 3, 2), True))
        self.assertEqual(ledger.today(self.meter)[0], (0.0, 0.0))
        self.clock.advance(86400)
        self.assertEqual(self.ended[-1][3], True)  # both snapshots at their midnights

    def test_a_restart_on_a_later_day_ends_the_stored_day(self) -> None:
        stored = DayStart(date(2024, 2, 28), MAR1 - 2 * 86400, ((90.0, 10.0),), True)
        store = MemoryValues({store_key("grid"): stored.to_dict()})
        ledger = self.ledger(store)
        self.assertEqual(self.ended, [("grid", date(2024, 2, 28), ((100.0, 10.0), (0.0, 0.0), (0.0, 0.0)), False)])
        self.assertEqual(ledger.start_of_day(self.meter).day, date(2024, 3, 1))
        self.assertEqual(store.get(store_key("grid"))["day"], "2024-03-01")

    def test_earlier_versions_day_starts_are_read(self) -> None:
        influx = DayStart(date(2024, 3, 1), MAR1 + 5, ((60.0, 1.0),), True).to_dict()
        ledger = self.ledger(MemoryValues({"influx:daystart:grid": influx}))
        self.assertEqual(ledger.today(self.meter)[0], (40.0, 9.0))
        self.assertTrue(ledger.start_of_day(self.meter).complete)
        old = legacy_day_start({"day": "2024-03-01", "start": [[1.0, 2.0]]}, UTC)
        self.assertEqual(old, DayStart(date(2024, 3, 1), MAR1, ((1.0, 2.0),), False))
        self.assertIsNone(legacy_day_start({"day": "x", "start": []}, UTC))
        self.assertIsNone(legacy_day_start({"day": "2024-03-01", "start": [[float("inf"), 0]]}, UTC))

    def test_a_failing_subscriber_does_not_stop_the_others(self) -> None:
        ledger = self.ledger()

        def broken(*args: Any) -> None:
            raise KeyError("bug")

        ledger._subscribers.insert(0, broken)
        self.clock.advance(MAR1 + 86400 - self.clock.seconds())
        self.assertEqual(len(self.ended), 1)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_the_clock_going_back_waits_for_the_day(self) -> None:
        ledger = self.ledger()
        self.clock.advance(MAR1 + 86400 - self.clock.seconds())
        self.clock.rightNow = MAR1 + 3600  # NTP steps back into yesterday
        ledger.roll_over()
        self.assertEqual(ledger.start_of_day(self.meter).day, date(2024, 3, 2))
        self.assertEqual(len(self.ended), 1)

    def test_since_never_goes_below_zero(self) -> None:
        start = DayStart(date(2024, 3, 1), MAR1, ((10.0, 5.0),), True)
        self.assertEqual(since(start, ((8.0, 7.0), (1.0, 1.0))), ((0.0, 2.0), (1.0, 1.0)))
        self.assertEqual(since(None, ((8.0, 7.0),)), ((0.0, 0.0),))


class TimezoneConfigTests(SynchronousTestCase):
    def parse(self, **data: Any) -> Any:
        return parse_config(data, "(t)", env={})

    def test_one_home_one_time_zone(self) -> None:
        self.assertIsNone(self.parse().timezone)
        self.assertEqual(self.parse(timezone="Europe/Amsterdam").tzinfo().key, "Europe/Amsterdam")
        influx = {"influxdb": {"url": "http://127.0.0.1:1", "timezone": "Europe/Berlin"}}
        self.assertEqual(self.parse(exporters=influx).timezone, "Europe/Berlin")  # stands in
        self.assertEqual(self.parse(timezone="Europe/Berlin", exporters=influx).timezone, "Europe/Berlin")
        err = self.assertRaises(ConfigError, self.parse, timezone="Europe/Paris", exporters=influx)
        self.assertIn("exporters.influxdb.timezone", str(err))
        for bad in ("Mars/Olympus", "", 5):
            err = self.assertRaises(ConfigError, self.parse, timezone=bad)
            self.assertIn("timezone", str(err))
