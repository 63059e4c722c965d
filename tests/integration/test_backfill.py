"""The simulator's backfill into the real store: deterministic, bounded in
time and memory (14 days at 10 s), interrupted cleanly by a stop, never
duplicated on restart; and the dashboard's 6 h history after it."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from meteremu.forecast import ForecastOptions
from meteremu.forecast import backfill as bf
from meteremu.forecast.backfill import Backfiller
from meteremu.forecast.dataset import SCHEMA, Dataset
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.past import Past
from meteremu.sources.simulator import BACKFILL_LABEL, Household, SimulatorOptions
from meteremu.store import Store
from tests.support import HTTPClient, start_app, test_config

DAY = 86400.0
T0 = 1_704_067_205.0  # 2024-01-01 00:00:05 UTC: the live bucket is [T0 - 5, T0 + 5)


def rows(path: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT ts, total, a, b, c, n FROM forecast_samples WHERE meter = 'grid' "
                            "ORDER BY ts").fetchall()


def backfilled(path: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT start, end, label FROM forecast_backfill WHERE meter = 'grid'").fetchall()


def past(days: float, end: float = T0) -> Past:
    return Past(end - days * DAY, end, Household(SimulatorOptions(seed=1), UTC).power_at, BACKFILL_LABEL)


class BackfillStoreTests(TestCase):
    timeout = 120

    def store(self) -> Store:
        path = os.path.join(os.path.abspath(self.mktemp()), "state.db")
        store = Store(path, 30.0, clock=reactor)
        store.startService()
        self.addCleanup(store.stopService)
        return store

    def job(self, store: Store, offer: Past) -> Backfiller:
        return Backfiller("grid", offer, store, reactor, 10.0, 14 * DAY)

    @inlineCallbacks
    def test_fourteen_days_bounded_and_deterministic(self):
        store = self.store()
        yield store.run_interaction(lambda txn: txn.execute(SCHEMA))
        batches: list[int] = []
        real = store.run_interaction

        def spy(interaction: Any, *args: Any) -> Any:
            if interaction is bf._write:
                batches.append(len(args[0]))
            return real(interaction, *args)

        store.run_interaction = spy  # type: ignore[method-assign]
        # the reactor keeps turning: a call that puts itself back on every turn runs between slices
        turns = [0]
        running = [True]

        def turn() -> None:
            turns[0] += 1
            if running[0]:
                reactor.callLater(0, turn)

        turn()
        written = yield self.job(store, past(14)).start()
        running[0] = False
        self.assertEqual(written, 14 * 8640 - 1)  # whole buckets before the live one
        self.assertTrue(batches and max(batches) <= bf.WRITE_BUCKETS)  # memory: one batch at a time
        self.assertEqual(sum(batches), written)
        self.assertGreaterEqual(turns[0], written // bf.SLICE_BUCKETS // 2)  # never one long block
        stored = rows(store.path)
        self.assertEqual(len(stored), written)
        self.assertEqual((stored[0][0], stored[-1][0]), (T0 - 5 - written * 10, T0 - 15))
        self.assertEqual({r[5] for r in stored}, {1})
        self.assertEqual(backfilled(store.path), [(T0 - 5 - written * 10, T0 - 5, BACKFILL_LABEL)])
        # the same household again, elsewhere: the same rows
        other = self.store()
        yield self.job(other, past(1)).start()
        self.assertEqual(rows(other.path), stored[-8639:])

    @inlineCallbacks
    def test_stopped_cleanly_and_resumed_without_duplicates(self):
        store = self.store()
        meters = MeterSet()
        meter = Meter("grid", reactor)
        meters.add(meter)
        options = ForecastOptions(enabled=True, flush_interval=3600.0)
        dataset = Dataset(meters, store, options, reactor)
        dataset.startService()
        meter.offer_past(past(3))
        job = dataset.backfills["grid"]
        while job.written < bf.WRITE_BUCKETS:
            yield deferLater(reactor, 0.01, lambda: None)
        yield dataset.stopService()  # mid-way: the transaction in flight ends, nothing more
        self.assertEqual(job.state, "stopped")
        first = rows(store.path)
        self.assertEqual(len(first), job.written)
        self.assertLess(job.written, job.planned)
        self.assertEqual(first[-1][0], T0 - 15)  # newest first: one contiguous piece before the live data
        self.assertEqual(len({r[0] for r in first}), len(first))
        self.assertEqual(backfilled(store.path), [(first[0][0], T0 - 5, BACKFILL_LABEL)])

        # an hour of live buckets, then a restart an hour later with the same household
        live = [(T0 - 5 + 10 * i) for i in range(360)]
        with sqlite3.connect(store.path) as conn:
            conn.executemany("INSERT INTO forecast_samples VALUES ('grid', ?, 1.0, 1.0, 0.0, 0.0, 9)",
                             [(ts,) for ts in live])
        later = T0 + 7200
        again = Dataset(meters, store, options, reactor)
        again.startService()
        meter.offer_past(past(3, later))
        yield again.settled()
        yield again.stopService()
        final = rows(store.path)
        stamps = [r[0] for r in final]
        self.assertEqual(len(stamps), len(set(stamps)))  # never twice
        self.assertEqual(stamps, [later - 5 - 10 * k for k in range(3 * 8640 - 1, 0, -1)])  # no hole
        self.assertEqual([r[5] for r in final if r[0] in set(live)], [9] * 360)  # live rows untouched
        self.assertEqual(again.backfills["grid"].written, len(stamps) - len(first) - 360)  # only the missing
        # the backfilled ranges: before and after the live hour, labelled
        self.assertEqual([(s, e) for s, e, _ in sorted(backfilled(store.path))],
                         [(later - 5 - (3 * 8640 - 1) * 10, T0 - 5), (T0 - 5 + 3600, later - 5)])


class DashboardAfterBackfillTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_six_hours_of_points_at_the_dataset_resolution(self):
        meters = {"grid": {"source": {"type": "simulator", "interval": "1h", "backfill": "7h"}}}
        forecast = {"enabled": True, "window": 30, "horizon": 30, "hidden_layers": [8], "max_iter": 3,
                    "max_samples": 500}
        app = yield start_app(self, test_config(self.mktemp(), meters=meters, forecast=forecast))
        yield app.forecast.dataset.settled()
        http = HTTPClient(self)
        response, body = yield http.get(f"http://127.0.0.1:{app.http_port()}/ui/power?span=21600")
        power = json.loads(body)
        self.assertEqual(power["backfill"]["state"], "done")
        history = power["history"]
        dataset_points = [p for p in history if p[0] < power["history_parts"][0]["to"]]
        steps = {round(b[0] - a[0], 3) for a, b in zip(dataset_points, dataset_points[1:], strict=False)}
        self.assertEqual(steps, {10.0})
        self.assertGreaterEqual(len(dataset_points), 2159)  # 6 h at 10 s
        self.assertGreaterEqual(history[-1][0] - history[0][0], 6 * 3600 - 20)
        part = power["history_parts"][0]
        self.assertEqual((part["source"], part["resolution"], part["label"]), ("backfill", 10.0, BACKFILL_LABEL))
        self.assertEqual(power["history_parts"][-1]["source"], "ring")  # the live reading
        self.assertEqual(power["history_parts"][-1]["points"], 1)

