"""Forecasting: bucketing, series, features, metrics with known answers, the
MLP on synthetic series, model files, the dataset in a real store, and the
trainer on a Clock (schedule, no overlap, failures retried) and on its real
one-thread pool."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, parse_config
from meteremu.forecast import ForecastOptions
from meteremu.forecast.dataset import Bucket, Bucketer, bucket_readings, bucket_start
from tests.support.shared.forecast import NO_ML, T0, Trainer, fm, np, sine

FAST = ForecastOptions(enabled=True, window=30, horizon=10, hidden_layers=(32,), max_iter=40,
                       resolution=10.0, random_state=0, max_gap=30.0, mape_floor=50.0)


class OptionsTests(SynchronousTestCase):
    def test_off_by_default_and_validated(self):
        config = parse_config({}, "(test)", env={})
        self.assertFalse(config.forecast.enabled)
        self.assertEqual(config.forecast.hidden_layers, (64, 16, 64))
        self.assertEqual(config.forecast.resolution, 10.0)
        self.assertEqual(config.forecast.retention, 14 * 86400.0)
        config = parse_config({"forecast": {"enabled": True, "hidden_layers": [8, 4], "retention": "2d",
                                            "train_interval": "30m", "window": 12}}, "(test)", env={})
        self.assertEqual(config.forecast.hidden_layers, (8, 4))
        self.assertEqual((config.forecast.retention, config.forecast.train_interval), (172800.0, 1800.0))

    def test_enabled_needs_numpy_and_sklearn(self):
        import meteremu.forecast

        self.patch(meteremu.forecast, "missing_packages", lambda: ["sklearn"])
        with self.assertRaises(ConfigError) as caught:
            parse_config({"forecast": {"enabled": True}}, "(test)", env={})
        self.assertEqual(caught.exception.key, "forecast.enabled")
        self.assertIn("install scikit-learn", caught.exception.why)
        parse_config({"forecast": {"enabled": False}}, "(test)", env={})  # off: nothing needed

    def test_errors_name_the_key(self):
        cases = [({"retention": 14}, "forecast.retention", "at least 1h"),
                 ({"hidden_layers": []}, "forecast.hidden_layers", "non-empty"),
                 ({"window": 0}, "forecast.window", "1 or more"),
                 ({"test_fraction": 0.9}, "forecast.test_fraction", "at most 0.5"),
                 ({"windw": 3}, "forecast.windw", "did you mean 'window'")]
        for body, key, why in cases:
            with self.assertRaises(ConfigError) as caught:
                parse_config({"forecast": body}, "(test)", env={})
            self.assertEqual(caught.exception.key, key)
            self.assertIn(why, caught.exception.why)


class BucketTests(SynchronousTestCase):
    def test_mean_per_bucket_by_reading_time(self):
        self.assertEqual(bucket_start(1_700_000_017.5, 10.0), 1_700_000_010.0)
        b = Bucketer(10.0)
        self.assertIsNone(b.add(100.0, 10, 1, 2, 7))
        self.assertIsNone(b.add(103.0, 20, 2, 4, 14))
        self.assertIsNone(b.add(109.9, 30, 3, 6, 21))
        done = b.add(110.0, 99, 0, 0, 99)
        self.assertEqual(done, Bucket(100.0, 20.0, 2.0, 4.0, 14.0, 3))
        self.assertIsNone(b.add(105.0, 1, 1, 1, 1))  # out of order: its bucket was handed out
        self.assertEqual(b.close(), Bucket(110.0, 99.0, 0.0, 0.0, 99.0, 1))
        self.assertIsNone(b.close())

    def test_sparse_fast_clock_leaves_gaps(self):
        # a simulator at speed 300, polled every 0.1 s: a reading every 30 simulated seconds
        buckets = bucket_readings([(t, 1.0, 1.0, 0.0, 0.0) for t in range(0, 120, 30)], 10.0)
        self.assertEqual([b.ts for b in buckets], [0.0, 30.0, 60.0, 90.0])


class SeriesTests(SynchronousTestCase):
    skip = NO_ML

    def test_regrid_averages_and_fills_short_gaps_only(self):
        ts = [0, 10, 10, 20, 50, 60, 130, 140]
        vs = [0, 10, 20, 30, 60, 70, 140, 150]
        s = fm.regrid(ts, vs, 10.0, max_gap=20.0)
        self.assertEqual(s.start, 0.0)
        expected = [0, 15, 30, 40, 50, 60, 70] + [math.nan] * 6 + [140, 150]
        np.testing.assert_allclose(s.values, expected)
        self.assertEqual(s.samples, 9)  # 7 measured buckets, 2 filled

    def test_no_extrapolation_and_nothing(self):
        values = np.array([math.nan, 1.0, math.nan, 3.0, math.nan])
        np.testing.assert_allclose(fm.fill_gaps(values, 5), [math.nan, 1, 2, 3, math.nan])
        self.assertEqual(len(fm.regrid([], [], 10.0).values), 0)

    def test_examples_never_span_a_gap(self):
        values = np.array([1.0, 2, 3, 4, math.nan, 6, 7, 8, 9, 10])
        self.assertEqual(list(fm.example_starts(values, 2, 1)), [0, 1, 5, 6, 7])
        self.assertEqual(list(fm.example_starts(values[:2], 2, 1)), [])

    def test_time_features_in_local_time(self):
        f = fm.time_features([T0, T0 + 6 * 3600, T0 + 3.5 * 86400], UTC)
        np.testing.assert_allclose(f[0], [0, 1, 0, 1], atol=1e-12)  # Monday midnight
        np.testing.assert_allclose(f[1][:2], [1, 0], atol=1e-12)  # 06:00
        np.testing.assert_allclose(f[2], [0, -1, 0, -1], atol=1e-12)  # Thursday noon: half a week
        self.assertEqual(fm.time_features([], UTC).shape, (0, 4))


class MetricTests(SynchronousTestCase):
    skip = NO_ML

    def test_persistence_on_a_ramp(self):
        series = fm.Series(0.0, 10.0, np.arange(100, dtype=float) + 100)
        starts = np.array([10, 20])
        actual = fm.targets(series, starts, window=5, horizon=3)
        _, last = fm.build_inputs(series, starts, 5, 0.0, 1.0, UTC)
        m = fm.error_metrics(actual, fm.persistence(last, 3))
        self.assertAlmostEqual(m["mae"], 2.0)
        self.assertAlmostEqual(m["mse"], 14 / 3)
        self.assertEqual(m["n"], 6)
        # |error| / actual over 115,116,117 and 125,126,127
        want = np.mean([1 / 115, 2 / 116, 3 / 117, 1 / 125, 2 / 126, 3 / 127]) * 100
        self.assertAlmostEqual(m["mape"], want)

    def test_mape_skips_near_zero_actuals(self):
        m = fm.error_metrics([0.0, 10.0, 200.0, -400.0], [5.0, 20.0, 150.0, -300.0], mape_floor=50)
        self.assertAlmostEqual(m["mape"], (50 / 200 + 100 / 400) / 2 * 100)
        self.assertAlmostEqual(m["mae"], (5 + 10 + 50 + 100) / 4)
        self.assertIsNone(fm.error_metrics([0.0, 1.0], [3.0, 4.0], mape_floor=50)["mape"])
        self.assertEqual(fm.error_metrics([1.0, math.nan], [1.0, 5.0])["n"], 1)
        self.assertIsNone(fm.error_metrics([math.nan], [1.0]))

    def test_skill(self):
        self.assertAlmostEqual(fm.skill_score({"mae": 25.0}, {"mae": 100.0}), 0.75)
        self.assertAlmostEqual(fm.skill_score({"mae": 150.0}, {"mae": 100.0}), -0.5)
        self.assertIsNone(fm.skill_score({"mae": 1.0}, {"mae": 0.0}))
        self.assertIsNone(fm.skill_score(None, {"mae": 1.0}))

    def test_shrink_minimises_absolute_error_per_step(self):
        actual = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
        predicted = np.array([[2.0, 5.0], [4.0, -5.0], [6.0, 5.0]])  # step 1 twice too big; step 2 noise
        np.testing.assert_allclose(fm.fit_shrink(predicted, actual), [0.5, 0.0])
        perfect = np.array([[1.0, -2.0], [2.0, 3.0]])
        np.testing.assert_allclose(fm.fit_shrink(perfect, perfect), [1.0, 1.0])

    def test_seasonal_naive_is_exact_on_a_daily_pattern(self):
        per_day = 8640
        day = np.sin(np.linspace(0, 2 * np.pi, per_day, endpoint=False)) * 1000
        series = fm.Series(T0, 10.0, np.concatenate([day, day]))
        starts = np.array([0, per_day, per_day + 500])
        pred = fm.seasonal_naive(series, starts, window=30, horizon=10)
        self.assertTrue(np.isnan(pred[0]).all())  # nothing a day before the first day
        actual = fm.targets(series, starts[1:], 30, 10)
        np.testing.assert_allclose(pred[1:], actual)


class ModelTests(SynchronousTestCase):
    skip = NO_ML

    def test_sine_is_forecast_far_better_than_persistence(self):
        ts, vs = sine(3000)
        progress: list[float] = []
        model = fm.train(ts, vs, FAST, now=42.0, progress=progress.append, tz=UTC)
        scores = model.meta["metrics"]
        self.assertLess(scores["model"]["mae"], 0.35 * scores["persistence"]["mae"])
        self.assertGreater(model.meta["skill"], 0.65)
        self.assertIsNone(scores["seasonal_naive"])  # less than a day of data
        self.assertEqual(progress[-1], 1.0)
        self.assertEqual(progress, sorted(progress))
        self.assertEqual(model.meta["trained_at"], 42.0)
        self.assertEqual(model.meta["samples"], 3000)
        self.assertEqual(model.meta["features"], fm.feature_spec(30, 10, 10.0))
        self.assertEqual(len(model.meta["shrink"]), 10)  # kept with the model, used by forecast()
        self.assertTrue(all(0.0 <= f <= 1.0 for f in model.meta["shrink"]))
        # the forecast continues the series from the step after its last sample
        points = model.forecast(ts[-40:], vs[-40:], UTC)
        self.assertEqual([p[0] for p in points], [ts[-1] + 10 * (k + 1) for k in range(10)])
        truth = 1000 + 800 * np.sin(2 * np.pi * np.arange(3000, 3010) / 60)
        self.assertLess(np.mean(np.abs(np.array([p[1] for p in points]) - truth)), 150)

    def test_constant_series(self):
        ts = T0 + np.arange(1500) * 10.0
        model = fm.train(ts, np.full(1500, 500.0), FAST, now=0.0, tz=UTC)
        scores = model.meta["metrics"]
        self.assertEqual(scores["persistence"]["mae"], 0.0)
        self.assertEqual(scores["persistence"]["mape"], 0.0)
        self.assertIsNone(model.meta["skill"])  # undefined against a perfect baseline
        self.assertLess(scores["model"]["mae"], 25.0)
        points = model.forecast(ts[-30:], np.full(30, 500.0), UTC)
        self.assertEqual(len(points), 10)
        for _, w in points:
            self.assertLess(abs(w - 500.0), 25.0)

    def test_gaps(self):
        ts, vs = sine(3000)
        keep = np.ones(3000, dtype=bool)
        keep[1000:1400] = False  # a long outage: split, not interpolated
        keep[2000:2003] = False  # 30 s: interpolated
        keep[::7] = False  # single lost buckets everywhere
        model = fm.train(ts[keep], vs[keep], FAST, now=0.0, tz=UTC)
        # lost: index 0 (a leading gap is never extrapolated) and 1000..1400 (the outage
        # plus the lost bucket 1400 next to it); every other hole is interpolated
        self.assertEqual(model.meta["samples"], 3000 - 1 - 401)
        self.assertGreater(model.meta["skill"], 0.5)
        # a forecast needs a contiguous window: a long gap at the end gives none
        self.assertEqual(model.forecast([ts[0], ts[100]], [1.0, 2.0], UTC), [])
        self.assertEqual(model.forecast(ts[-100:-90], vs[-100:-90], UTC), [])

    def test_not_enough_data_and_cancel(self):
        ts, vs = sine(60)
        self.assertRaises(fm.NotEnoughData, fm.train, ts, vs, FAST, 0.0)
        ts, vs = sine(1000)
        self.assertRaises(fm.TrainingCancelled, fm.train, ts, vs, FAST, 0.0, should_stop=lambda: True)

    def test_seasonal_baseline_with_two_days(self):
        opts = ForecastOptions(enabled=True, window=12, horizon=6, hidden_layers=(8,), max_iter=2,
                               max_samples=2000)
        n = 2 * 8640
        ts = T0 + np.arange(n) * 10.0
        vs = 1000 + 500 * np.sin(2 * np.pi * np.arange(n) / 8640)
        model = fm.train(ts, vs, opts, now=0.0, tz=UTC)
        seasonal = model.meta["metrics"]["seasonal_naive"]
        self.assertAlmostEqual(seasonal["mae"], 0.0, places=6)
        self.assertEqual(seasonal["n"], model.meta["metrics"]["persistence"]["n"])

    def test_save_and_reload_when_compatible(self):
        ts, vs = sine(800)
        opts = ForecastOptions(enabled=True, window=12, horizon=4, hidden_layers=(8,), max_iter=2)
        model = fm.train(ts, vs, opts, now=7.0, tz=UTC)
        base = os.path.join(self.mktemp(), "state.forecast-grid")
        fm.save(model, base)
        features, spec = fm.feature_spec(12, 4, 10.0), fm.model_spec((8,))
        loaded, why = fm.load(base, features, spec)
        self.assertEqual(why, "loaded")
        self.assertEqual(loaded.meta, json.loads(json.dumps(model.meta)))
        self.assertEqual(loaded.forecast(ts[-20:], vs[-20:], UTC), model.forecast(ts[-20:], vs[-20:], UTC))
        self.assertIsNone(fm.load(base, fm.feature_spec(24, 4, 10.0), spec)[0])
        self.assertIn("hidden_layers", fm.load(base, features, fm.model_spec((16,)))[1])
        self.assertEqual(fm.load(base + "-none", features, spec), (None, "no saved model"))
        with open(base + ".json") as handle:
            meta = json.load(handle)
        meta["sklearn"] = "0.1"
        with open(base + ".json", "w") as handle:
            json.dump(meta, handle)
        loaded, why = fm.load(base, features, spec)
        self.assertIsNone(loaded)
        self.assertIn("scikit-learn 0.1", why)
        meta["sklearn"] = model.meta["sklearn"]
        meta["id"] = "other"
        with open(base + ".json", "w") as handle:
            json.dump(meta, handle)
        self.assertEqual(fm.load(base, features, spec)[1], "model file does not match its metadata")
        with open(base + ".json", "w") as handle:
            handle.write("{torn")
        self.assertIn("unreadable", fm.load(base, features, spec)[1])


class FakeData:
    def __init__(self) -> None:
        self.loads: list[str] = []

    def load(self, meter: str) -> Deferred[list[tuple[float, float]]]:
        self.loads.append(meter)
        return succeed([(T0, 1.0)])


def sync_thread(f: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


class FakeModel:
    def __init__(self, n: int) -> None:
        self.meta = {"n": n, "metrics": {}, "samples": n}


class TrainerClockTests(SynchronousTestCase):
    skip = NO_ML

    def make(self, job: Any, run_in_thread: Any = sync_thread, saved: Any = None) -> tuple[Trainer, Clock]:
        clock = Clock()
        options = ForecastOptions(enabled=True, train_interval=3600.0, retry_interval=300.0)
        trainer = Trainer(options, FakeData().load, lambda: ["grid"], clock, run_in_thread=run_in_thread,
                          job=job, loader=lambda meter: (saved, "loaded" if saved else "no saved model"))
        return trainer, clock

    def test_hourly_on_the_real_clock(self):
        calls: list[float] = []
        trainer, clock = None, None

        def job(meter, rows, should_stop, progress):
            calls.append(clock.seconds())
            progress(1.0)
            return FakeModel(len(calls))

        trainer, clock = self.make(job)
        trainer.startService()
        self.assertEqual(calls, [0.0])  # no saved model: trained at once
        self.assertEqual(trainer.status()["state"], "idle")
        self.assertEqual(trainer.status()["next_run"], 3600.0)
        clock.advance(3599)
        self.assertEqual(len(calls), 1)
        clock.advance(1)
        clock.advance(3600)
        self.assertEqual(calls, [0.0, 3600.0, 7200.0])
        self.assertEqual(trainer.models["grid"].meta["n"], 3)
        self.assertEqual(trainer.runs, 3)
        trainer.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_the_first_training_waits_for_the_backfill(self):
        calls: list[str] = []
        backfill: Deferred[None] = Deferred()
        clock = Clock()
        options = ForecastOptions(enabled=True, train_interval=3600.0)
        trainer = Trainer(options, FakeData().load, lambda: ["grid"], clock, run_in_thread=sync_thread,
                          job=lambda *a: (calls.append("trained"), FakeModel(1))[1],
                          loader=lambda meter: (None, "no saved model"), settled=lambda: backfill)
        trainer.startService()
        self.assertEqual(calls, [])  # no model, but the backfill is still being written
        self.assertEqual(trainer.status()["message"], "waiting for the backfill before the first training")
        backfill.callback(None)
        self.assertEqual(calls, ["trained"])
        trainer.stopService()

    def test_a_compatible_saved_model_is_used_without_training(self):
        calls: list[str] = []
        saved = FakeModel(0)
        trainer, clock = self.make(lambda *a: calls.append("x"), saved=saved)
        trainer.startService()
        self.assertIs(trainer.models["grid"], saved)
        self.assertEqual(calls, [])
        trainer.stopService()

    def test_never_overlapping(self):
        pending: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

        def manual(f: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((d, f, args))
            return d

        def job(meter, rows, should_stop, progress):
            progress(0.4)
            return FakeModel(1)

        trainer, clock = self.make(job, run_in_thread=manual, saved=FakeModel(0))
        trainer.startService()
        d, f, args = pending.pop()  # loading saved models
        d.callback(f(*args))
        self.assertEqual(trainer.state, "idle")
        run = trainer.train_now()
        self.assertIsNotNone(run)
        self.assertIsNone(trainer.train_now())  # refused while running
        clock.advance(3600)  # the scheduled run is skipped, not queued
        self.assertEqual((trainer.skipped, len(pending)), (1, 1))
        d, f, args = pending.pop()
        result = f(*args)  # the job "runs in the thread": progress is visible meanwhile
        self.assertEqual(trainer.status()["progress"], 0.4)
        self.assertEqual(trainer.status()["state"], "running")
        d.callback(result)
        self.assertEqual(trainer.status()["state"], "idle")
        self.assertIsNone(self.successResultOf(run))
        self.assertIsNotNone(trainer.train_now())
        self.assertEqual(len(pending), 1)
        # stopping while a job runs: the flag is raised, the stop waits for the job
        stopped = trainer.stopService()
        self.assertNoResult(stopped)
        d, f, args = pending.pop()
        self.assertTrue(args[2]())  # should_stop
        d.errback(fm.TrainingCancelled("stopped"))
        self.successResultOf(stopped)
        self.assertEqual(trainer.message, "training cancelled (stopping)")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_failure_logged_and_retried(self):
        outcomes = [RuntimeError("boom"), None]

        def job(meter, rows, should_stop, progress):
            outcome = outcomes.pop(0)
            if outcome is not None:
                raise outcome
            return FakeModel(2)

        trainer, clock = self.make(job)
        trainer.startService()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        status = trainer.status()
        self.assertEqual((status["state"], status["failures"]), ("idle", 1))
        self.assertIn("boom", status["last_error"])
        self.assertIn("boom", status["notes"]["grid"])
        self.assertEqual(status["next_run"], 300.0)  # the retry comes before the hourly run
        clock.advance(300)
        self.assertEqual(trainer.models["grid"].meta["n"], 2)
        self.assertIsNone(trainer.status()["last_error"])
        self.assertEqual(trainer.status()["notes"], {})
        trainer.stopService()

    def test_not_enough_data_is_not_a_failure(self):
        def job(meter, rows, should_stop, progress):
            raise fm.NotEnoughData("3 samples")

        trainer, clock = self.make(job)
        trainer.startService()
        status = trainer.status()
        self.assertEqual((status["failures"], status["runs"], status["next_run"]), (0, 1, 3600.0))
        self.assertIn("3 samples", status["notes"]["grid"])
        trainer.stopService()
