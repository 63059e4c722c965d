"""Forecasting: bucketing, series, features, metrics with known answers, the
MLP on synthetic series, model files, the dataset in a real store, and the
trainer on a Clock (schedule, no overlap, failures retried) and on its real
one-thread pool."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from meteremu.forecast import ForecastOptions
from meteremu.forecast.dataset import Dataset
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.reading import PhaseReading, Reading
from meteremu.store import Store
from tests.support import ROOT
from tests.support.shared.forecast import NO_ML, T0, Trainer, model_base, sine


def reading(t: float, total: float) -> Reading:
    return Reading(phases=(PhaseReading.from_power(total / 2), PhaseReading.from_power(total / 4),
                           PhaseReading.from_power(total / 4)), measured_at=t)


class DatasetTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_buckets_written_in_batches_and_pruned(self):
        path = os.path.join(self.mktemp(), "state.db")
        clock = Clock()
        store = Store(path, 30.0, clock=clock)
        store.startService()
        self.addCleanup(store.stopService)
        meters = MeterSet()
        meter = Meter("grid", clock)
        meters.add(meter)
        options = ForecastOptions(enabled=True, retention=2 * 3600.0, flush_interval=5.0)
        dataset = Dataset(meters, store, options, clock)
        dataset.startService()
        # one reading every 2 s of *reading* time, for 3 hours, within one real second
        for i in range(5401):
            meter.update(reading(T0 + 2 * i, 100.0 + (i % 5)))
        self.assertEqual(dataset.written, 0)  # nothing written from the listener itself
        self.assertEqual(len(dataset.series("grid")), 1080)
        self.assertEqual(dataset.series("grid")[0], (T0, 102.0))  # mean of 100..104
        clock.advance(5)  # one batch, one transaction
        yield dataset._writing
        self.assertEqual(dataset.written, 1080)
        rows = yield dataset.load("grid")
        self.assertEqual(len(rows), 721)  # 2 h back from the newest bucket, both ends included
        self.assertEqual(rows[-1][0], T0 + 1079 * 10)
        yield dataset.stopService()  # the open bucket is written at stop
        with sqlite3.connect(path) as conn:
            count, last, n = conn.execute(
                "SELECT COUNT(*), MAX(ts), (SELECT n FROM forecast_samples ORDER BY ts DESC LIMIT 1) "
                "FROM forecast_samples WHERE meter='grid'").fetchone()
        # the final write pruned again: 2 h back from the newest bucket, T0 + 3 h
        self.assertEqual((count, last, n), (721, T0 + 10800, 1))
        # a new meter added later is followed too, and its recent buckets come back at start
        dataset2 = Dataset(meters, store, options, clock)
        dataset2.startService()
        yield store.run_interaction(lambda txn: None)  # the recent-rows read has run
        self.assertEqual(len(dataset2.series("grid")), 721)
        garage = Meter("garage", clock)
        meters.add(garage)
        garage.update(reading(T0, 5.0))
        garage.update(reading(T0 + 10, 5.0))
        self.assertEqual(dataset2.series("garage"), [(T0, 5.0)])
        yield dataset2.stopService()


class TrainerThreadTests(TestCase):
    """The real thing: a dedicated one-thread pool named "training"."""

    skip = NO_ML
    timeout = 60

    @inlineCallbacks
    def test_trains_in_its_own_pool_and_saves_next_to_the_store(self):
        ts, vs = sine(1200)
        rows = list(zip(ts.tolist(), vs.tolist(), strict=True))
        threads: list[str] = []
        reactor_thread = threading.current_thread()
        tmp = self.mktemp()
        options = ForecastOptions(enabled=True, window=12, horizon=4, hidden_layers=(8,), max_iter=3)
        trainer = Trainer(options, lambda meter: succeed(rows), lambda: ["grid"], reactor, reactor=reactor,
                          base=lambda meter: model_base(os.path.join(tmp, "state.db"), meter))
        original = trainer._train_and_save

        def job(*args: Any) -> Any:
            threads.append(threading.current_thread().name)
            self.assertIsNot(threading.current_thread(), reactor_thread)
            return original(*args)

        trainer.job = job
        trainer.startService()
        self.addCleanup(lambda: trainer.running and trainer.stopService())
        while trainer.running_now:
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(threads), 1)
        self.assertIn("training", threads[0])  # PoolThread-training-0
        self.assertIn("grid", trainer.models)
        self.assertTrue(os.path.exists(os.path.join(tmp, "state.forecast-grid.joblib")))
        self.assertTrue(os.path.exists(os.path.join(tmp, "state.forecast-grid.json")))
        # stopping in the middle of a run returns quickly (the job checks the flag per chunk)
        self.assertIsNotNone(trainer.train_now())
        yield trainer.stopService()
        self.assertFalse(trainer.pool.started)
        self.assertFalse(any(t.is_alive() for t in trainer.pool.threads))
        # a new trainer reloads the saved model instead of training
        again = Trainer(options, lambda meter: succeed(rows), lambda: ["grid"], reactor, reactor=reactor,
                        base=lambda meter: model_base(os.path.join(tmp, "state.db"), meter))
        again.job = lambda *a: self.fail("should not train")
        again.startService()
        self.addCleanup(lambda: again.running and again.stopService())
        while again.running_now:
            yield deferLater(reactor, 0.05, lambda: None)
        yield again.stopService()
        self.assertEqual(again.models["grid"].meta["id"], trainer.models["grid"].meta["id"])


class ImportTests(TestCase):
    timeout = 60

    def test_no_numpy_or_sklearn_without_forecasting(self):
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        code = (
            "import sys\n"
            "from twisted.internet import reactor\n"
            "import meteremu.app\n"
            "from tests.support import test_config\n"
            f"app = meteremu.app.build(test_config({tmp!r}), reactor)\n"
            "assert app.forecast is None\n"
            "bad = sorted(m for m in ('sklearn', 'numpy', 'scipy', 'joblib') if m in sys.modules)\n"
            "assert not bad, bad\n")
        if NO_ML is None:
            code += (f"app = meteremu.app.build(test_config({tmp!r}, forecast={{'enabled': True}}), reactor)\n"
                     "assert 'numpy' in sys.modules and app.forecast is not None\n")
        code += "print('ok')\n"
        root = ROOT
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                                text=True, timeout=50)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "ok")
