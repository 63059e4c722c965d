"""The backfill's pure parts: what to compute, in which pieces, and the values;
the simulator's ``backfill`` option and its config errors."""

from __future__ import annotations

import os
import textwrap
from datetime import UTC

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, load_config
from meteremu.forecast.backfill import add_range, chunks, compute, plan
from meteremu.forecast.dataset import merge_series
from meteremu.meter import Meter
from meteremu.past import Past
from meteremu.sources.simulator import BACKFILL_LABEL, Household, SimulatorOptions, SimulatorSource

T0 = 1_704_067_200.0  # 2024-01-01 00:00 UTC


class PlanTests(SynchronousTestCase):
    def test_whole_buckets_before_the_live_one(self):
        # [T0 - 100 + 5, T0 + 5): the bucket holding T0 + 5 is live, so it is not computed
        self.assertEqual(plan(T0 - 95, T0 + 5, None, 10.0), [(T0 / 10 - 9, T0 / 10)])
        self.assertEqual(plan(T0, T0 + 5, None, 10.0), [])

    def test_only_around_what_is_stored_newest_first(self):
        k = int(T0 / 10)
        stored = (T0 - 500, T0 - 300)  # buckets k-50 .. k-30 are there (gaps inside stay)
        self.assertEqual(plan(T0 - 1000, T0, stored, 10.0), [(k - 29, k), (k - 100, k - 50)])
        self.assertEqual(plan(T0 - 400, T0, stored, 10.0), [(k - 29, k)])
        self.assertEqual(plan(T0 - 1000, T0 - 600, stored, 10.0), [(k - 100, k - 60)])
        self.assertEqual(plan(T0 - 500, T0 - 290, stored, 10.0), [])

    def test_chunks_cover_the_range_once(self):
        self.assertEqual(list(chunks(0, 10, 4)), [(6, 10), (2, 6), (0, 2)])
        self.assertEqual(list(chunks(0, 10, 4, newest_first=False)), [(0, 4), (4, 8), (8, 10)])
        self.assertEqual(list(chunks(5, 5, 4)), [])

    def test_ranges_join_per_label(self):
        ranges = add_range([], 20.0, 30.0, "sim")
        ranges = add_range(ranges, 10.0, 20.0, "sim")
        ranges = add_range(ranges, 40.0, 50.0, "sim")
        self.assertEqual(ranges, [(10.0, 30.0, "sim"), (40.0, 50.0, "sim")])
        self.assertEqual(add_range(ranges, 30.0, 40.0, "other")[1], (30.0, 40.0, "other"))

    def test_merge_keeps_what_is_there(self):
        merged = merge_series([(20.0, 1.0), (30.0, 1.0)], [(10.0, 5.0), (20.0, 5.0)], 10)
        self.assertEqual(list(merged), [(10.0, 5.0), (20.0, 1.0), (30.0, 1.0)])
        self.assertEqual(list(merge_series([(3.0, 0.0)], [(1.0, 0.0), (2.0, 0.0)], 2)), [(2.0, 0.0), (3.0, 0.0)])


class ComputeTests(SynchronousTestCase):
    def test_the_household_at_each_bucket_middle_deterministic(self):
        house = Household(SimulatorOptions(seed=3), UTC)
        past = Past(T0 - 3600, T0, house.power_at, "sim")
        rows = compute("grid", past, int(T0 / 10) - 6, int(T0 / 10), 10.0)
        self.assertEqual([r[1] for r in rows], [T0 - 60 + 10 * i for i in range(6)])
        again = Household(SimulatorOptions(seed=3), UTC)
        self.assertEqual(rows, compute("grid", Past(0, T0, again.power_at, "sim"), int(T0 / 10) - 6,
                                       int(T0 / 10), 10.0))
        reading = house.reading_at(T0 - 55)
        self.assertEqual(rows[0][2:], (reading.total_act_power, *(p.act_power for p in reading.phases), 1))


class SimulatorOptionTests(SynchronousTestCase):
    def config(self, backfill: str) -> str:
        path = os.path.join(self.mktemp() + ".yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(textwrap.dedent(f"""\
                meters:
                  grid:
                    source: {{type: simulator, backfill: {backfill}}}
                """))
        return path

    def test_bad_values_name_the_key_and_file(self):
        for bad in ("banana", "0s", "400d"):
            path = self.config(bad)
            exc = self.assertRaises(ConfigError, load_config, path, {})
            self.assertEqual((exc.file, exc.key), (path, "meters.grid.source.backfill"))
        config = load_config(self.config("14d"), {})
        self.assertEqual(config.meters["grid"].source.options.backfill, 14 * 86400.0)

    def test_the_source_offers_its_past_at_start(self):
        clock = Clock()
        clock.advance(T0)
        meter = Meter("grid", clock)
        offers: list[Past] = []
        meter.add_past_listener(lambda m, past: offers.append(past))
        source = SimulatorSource(meter, SimulatorOptions(backfill=86400.0, interval=3600.0), clock, UTC)
        source.startService()
        self.addCleanup(source.stopService)
        [past] = offers
        self.assertEqual((past.start, past.end, past.label), (T0 - 86400, T0, BACKFILL_LABEL))
        self.assertEqual(past.power_at(T0 - 5)[0], source.household.reading_at(T0 - 5).total_act_power)
        late: list[Past] = []
        meter.add_past_listener(lambda m, p: late.append(p))  # a listener added later hears of it too
        self.assertEqual(late, [past])
        plain = Meter("other", clock)
        SimulatorSource(plain, SimulatorOptions(interval=3600.0), clock, UTC).startService()
        self.assertIsNone(plain.past)  # no backfill unless asked for
