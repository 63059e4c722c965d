"""Training off the reactor: a Service with its own one-thread pool.

The :class:`Trainer` owns ``ThreadPool(minthreads=0, maxthreads=1,
name="training")`` and runs every fit there with ``deferToThreadPool`` —
never on the reactor thread and never in the reactor's shared pool, which
serves ``/metrics`` and DNS lookups. Runs are scheduled every
``train_interval`` on the real clock (the injected ``clock``; the simulator's
fast clock only speeds up the *data*), can be started on demand
(``POST /ui/train``), and never overlap: a scheduled tick during a run is
skipped, an on-demand request is refused. A failed run is logged and retried
after ``retry_interval``; too little data is not a failure (it is reported
and the next scheduled run tries again).

Stopping: ``pool.stop()`` blocks the reactor until the running job ends, so
the job is trained in chunks (:func:`meteremu.forecast.model.train`) that look
at a stop flag between them; ``stopService`` sets the flag, waits (without
blocking) for the job to notice, then stops the idle pool.

Saved models are loaded in the pool at start (importing scikit-learn there,
not on the reactor thread); a meter without a compatible saved model is
trained as soon as the dataset's backfill (if a source offered one) is
written, so a first start trains on that history rather than on nothing.

:class:`ForecastService` bundles the dataset and the trainer and answers the
dashboard (history, forecast, metrics, training state).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from meteremu.clocks import wall
from meteremu.forecast import ForecastOptions
from meteremu.forecast import model as fmodel
from meteremu.forecast.dataset import Dataset
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.logs import logger
from meteremu.memory import release_memory
from meteremu.meterset import MeterSet
from meteremu.store import Store

log = logger(__name__)

Rows = list[tuple[float, float]]
Job = Callable[[str, Rows, Callable[[], bool], Callable[[float], None]], fmodel.FittedModel]
Loader = Callable[[str], tuple[fmodel.FittedModel | None, str]]


def model_base(store_path: str, meter: str) -> str:
    """Model files live next to the store: ``state/meteremu.forecast-grid.{joblib,json}``."""
    return f"{os.path.splitext(store_path)[0]}.forecast-{meter}"


class TrainingFailed(Exception):
    """One or more meters' training failed (each was logged with its traceback)."""


class Trainer(Service):
    """Trains one model per meter, hourly and on demand, in a dedicated thread."""

    name = "forecast-trainer"

    def __init__(self, options: ForecastOptions, load_rows: Callable[[str], Deferred[Rows]],
                 meters: Callable[[], list[str]], clock: IReactorTime, *,
                 reactor: IReactorThreads | None = None, base: Callable[[str], str] | None = None,
                 run_in_thread: Callable[..., Deferred[Any]] | None = None,
                 job: Job | None = None, loader: Loader | None = None,
                 settled: Callable[[], Deferred[Any]] | None = None) -> None:
        self.options = options
        # The first training waits for the dataset's backfill (if any), so a
        # first start trains on the backfilled history rather than on nothing.
        self.settled = settled or (lambda: succeed(None))
        self.load_rows = load_rows
        self.meters = meters
        self.clock = clock
        self.base = base or (lambda meter: model_base("meteremu.db", meter))
        self.pool = ThreadPool(minthreads=0, maxthreads=1, name="training")
        if run_in_thread is None:
            if reactor is None:
                raise TypeError("Trainer needs a reactor to run training in its thread (or run_in_thread)")
            threads = reactor
            run_in_thread = lambda f, *a: deferToThreadPool(threads, self.pool, f, *a)  # noqa: E731
        self._thread = run_in_thread
        self.job = job or self._train_and_save
        self.loader = loader or self._load_saved
        self.models: dict[str, fmodel.FittedModel] = {}
        self.notes: dict[str, str] = {}  # per meter: why there is no (new) model
        self.state = "idle"
        self.progress = 0.0
        self.message: str | None = None
        self.last_error: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.runs = 0
        self.failures = 0
        self.skipped = 0
        self._running: Deferred[Any] | None = None
        self._stopping = False
        self._loop: LoopingCall | None = None
        self._retry: Any = None

    # -- jobs (run in the training thread) ---------------------------------------------
    def _train_and_save(self, meter: str, rows: Rows, should_stop: Callable[[], bool],
                        progress: Callable[[float], None]) -> fmodel.FittedModel:
        import numpy as np

        try:
            data = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
            fitted = fmodel.train(data[:, 0], data[:, 1], self.options, wall(self.clock),
                                  progress, should_stop)
            fmodel.save(fitted, self.base(meter))
        finally:
            _release_memory()
        return fitted

    def _load_saved(self, meter: str) -> tuple[fmodel.FittedModel | None, str]:
        opts = self.options
        return fmodel.load(self.base(meter), fmodel.feature_spec(opts.window, opts.horizon, opts.resolution),
                           fmodel.model_spec(opts.hidden_layers))

    # -- state ---------------------------------------------------------------------------
    @property
    def running_now(self) -> bool:
        return self._running is not None

    def _should_stop(self) -> bool:
        return self._stopping

    def status(self) -> dict[str, Any]:
        next_run = None
        call = self._loop.call if self._loop is not None and self._loop.running else None
        if call is not None:
            next_run = call.getTime()
        if self._retry is not None and self._retry.active():
            retry_at = self._retry.getTime()
            next_run = retry_at if next_run is None else min(next_run, retry_at)
        return {"state": self.state, "progress": round(self.progress, 4), "message": self.message,
                "last_error": self.last_error, "started_at": self.started_at,
                "finished_at": self.finished_at, "next_run": next_run,
                "runs": self.runs, "failures": self.failures, "notes": dict(self.notes)}

    # -- runs ----------------------------------------------------------------------------
    def train_now(self, reason: str = "on demand") -> Deferred[None] | None:
        """Start a training run unless one is running (then ``None``).

        The Deferred fires (with ``None``) when the run is over, whatever its outcome.
        """
        if self._running is not None or self._stopping or not self.running:
            return None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self.state, self.progress, self.message = "running", 0.0, f"training ({reason})"
        self.started_at = wall(self.clock)
        log.info("forecast training started ({reason})", reason=reason)
        run: Deferred[Any] = Deferred()
        self._running = run  # set first: a run may finish synchronously (tests, no data)
        d = ensureDeferred(self._run())
        d.addCallbacks(self._succeeded, self._failed)
        d.addBoth(self._finished)
        d.chainDeferred(run)
        return run

    async def _run(self) -> int:
        names = list(self.meters())
        trained = 0
        errors: list[BaseException] = []
        for index, name in enumerate(names):
            if self._stopping:
                raise fmodel.TrainingCancelled("stopped")
            self.message = f"training {name} ({index + 1}/{len(names)})" if len(names) > 1 else f"training {name}"
            rows = await self.load_rows(name)
            if self._stopping:
                raise fmodel.TrainingCancelled("stopped")

            def progress(fraction: float, index: int = index) -> None:
                self.progress = (index + max(0.0, min(1.0, fraction))) / len(names)

            try:
                fitted = await self._thread(self.job, name, rows, self._should_stop, progress)
            except fmodel.NotEnoughData as exc:
                self.notes[name] = f"not enough data yet: {exc}"
                log.info("forecast for {meter}: not enough data yet ({why})", meter=name, why=str(exc))
                continue
            except fmodel.TrainingCancelled:
                raise
            except Exception as exc:
                self.notes[name] = f"training failed: {type(exc).__name__}: {exc}"
                log.failure("forecast training for {meter} failed", meter=name)
                errors.append(exc)
                continue
            self.models[name] = fitted
            self.notes.pop(name, None)
            trained += 1
            metrics = fitted.meta.get("metrics", {})
            log.info("forecast for {meter} trained on {samples} samples: MAE {mae} W "
                     "(persistence {pmae} W), skill {skill}", meter=name,
                     samples=fitted.meta.get("samples"),
                     mae=_fmt((metrics.get("model") or {}).get("mae")),
                     pmae=_fmt((metrics.get("persistence") or {}).get("mae")),
                     skill=_fmt(fitted.meta.get("skill"), 3))
        if errors:
            raise TrainingFailed(f"{len(errors)} of {len(names)} meter(s) failed; first: "
                                 f"{type(errors[0]).__name__}: {errors[0]}")
        return trained

    def _succeeded(self, trained: int) -> None:
        self.runs += 1
        self.last_error = None
        self.progress = 1.0
        self.message = f"trained {trained} model(s)" if trained else "no model trained (not enough data yet)"

    def _failed(self, failure: Any) -> None:
        if failure.check(fmodel.TrainingCancelled):
            self.message = "training cancelled (stopping)"
            return
        self.failures += 1
        self.last_error = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        self.message = "training failed; will retry"
        if failure.check(TrainingFailed):  # each meter's error was logged with its traceback
            log.error("forecast training run failed ({why}); retrying in {retry:g} s",
                      why=failure.getErrorMessage(), retry=self.options.retry_interval)
        else:
            log.failure("forecast training run failed; retrying in {retry:g} s", failure,
                        retry=self.options.retry_interval)
        if not self._stopping:
            self._retry = self.clock.callLater(self.options.retry_interval, self._retry_now)

    def _finished(self, _: object) -> None:
        self.state = "idle"
        self.finished_at = wall(self.clock)
        self._running = None

    def _retry_now(self) -> None:
        self._retry = None
        self.train_now("retry after a failure")

    def _scheduled(self) -> None:
        if self._running is not None:
            self.skipped += 1
            log.info("forecast training: a run is still going; skipping this scheduled one")
            return
        self.train_now("scheduled")

    # -- saved models ------------------------------------------------------------------------
    async def _load_all(self) -> list[str]:
        missing = []
        for name in list(self.meters()):
            if self._stopping:
                break
            fitted, why = await self._thread(self.loader, name)
            if fitted is None:
                log.info("forecast for {meter}: {why}; will train", meter=name, why=why)
                missing.append(name)
            else:
                self.models[name] = fitted
                at = fitted.meta.get("trained_at")
                log.info("forecast for {meter}: loaded the model trained {at}", meter=name,
                         at=datetime.fromtimestamp(at).isoformat(timespec="seconds")
                         if isinstance(at, int | float) else "(unknown)")
        return missing

    def _after_load(self, missing: list[str]) -> None:
        self._finished(None)
        self.message = None
        if missing and not self._stopping:
            waiting = self.settled()
            if not waiting.called:
                self.message = "waiting for the backfill before the first training"

            def go(_: object) -> None:
                if not self._stopping and self.running:
                    if self.message == "waiting for the backfill before the first training":
                        self.message = None
                    self.train_now("no saved model")

            waiting.addCallback(go).addErrback(lambda f: log.failure("waiting for the backfill failed", f))

    def _load_failed(self, failure: Any) -> None:
        log.failure("loading saved forecast models failed; will train", failure)
        self._finished(None)
        if not self._stopping:
            self.train_now("saved models unreadable")

    # -- service ----------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.pool.start()
        self._loop = LoopingCall(self._scheduled)
        self._loop.clock = self.clock
        self._loop.start(self.options.train_interval, now=False).addErrback(
            lambda f: log.failure("forecast schedule stopped", f))
        self.state, self.progress, self.message = "running", 0.0, "loading saved models"
        d = ensureDeferred(self._load_all())
        self._running = d
        d.addCallbacks(self._after_load, self._load_failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        waiting: Deferred[None] = Deferred()
        running = self._running or succeed(None)
        running.addBoth(lambda _: waiting.callback(None))

        def stop_pool(_: object) -> None:
            if self.pool.started:
                self.pool.stop()  # idle by now: returns at once

        return waiting.addCallback(stop_pool)


def _release_memory() -> None:
    """Hand the training's freed heap back to the OS, so the service's RSS does
    not stay at its training peak between runs."""
    release_memory()


def _fmt(value: Any, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _rounded(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {key: (round(value, 3) if isinstance(value, float) else value) for key, value in metrics.items()}


class ForecastService(MultiService):
    """The dataset and the trainer, and the view the dashboard reads."""

    def __init__(self, options: ForecastOptions, meters: MeterSet, store: Store, reactor: IReactor,
                 tz: Any = None) -> None:
        super().__init__()
        self.options = options
        self.meters = meters
        self.tz = tz
        self.dataset = Dataset(meters, store, options, reactor)
        self.trainer = Trainer(options, self.dataset.load, meters.keys, reactor, reactor=reactor,
                               base=lambda meter: model_base(store.path, meter),
                               settled=self.dataset.settled)
        self.dataset.setServiceParent(self)
        self.trainer.setServiceParent(self)
        self._cache: dict[str, tuple[Any, list[tuple[float, float]]]] = {}

    def training_status(self) -> dict[str, Any]:
        return self.trainer.status()

    def train_now(self) -> Deferred[None] | None:
        return self.trainer.train_now()

    def forecast(self, meter: str, series: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """The model's forecast after the last of ``series``; cached per (last sample, model)."""
        fitted = self.trainer.models.get(meter)
        if fitted is None or not series:
            return []
        key = (series[-1][0], fitted.meta.get("id"))
        cached = self._cache.get(meter)
        if cached is not None and cached[0] == key:
            return cached[1]
        recent = series[-(fitted.window + 1 + int(self.options.max_gap // self.options.resolution)):]
        try:
            points = fitted.forecast([p[0] for p in recent], [p[1] for p in recent], self.tz)
        except Exception:
            log.failure("forecast for {meter} failed", meter=meter)
            points = []
        self._cache[meter] = (key, points)
        return points

    def history(self, meter: str, since: float, step: float) -> Deferred[list[tuple[float, float]]]:
        """Dataset buckets from ``since`` on (means per ``step`` where older than memory)."""
        return self.dataset.window(meter, since, step)

    def backfill(self, meter: str) -> tuple[list[tuple[float, float, str]], dict[str, Any] | None]:
        """The meter's backfilled ranges ``(start, end, label)`` and its backfill run's status."""
        return list(self.dataset.backfill_ranges.get(meter, [])), self.dataset.backfill_status(meter)

    def view(self, meter: str, span: float) -> dict[str, Any]:
        """Forecast, metrics and training state (the history comes from :meth:`history`)."""
        series = self.dataset.series(meter)
        fitted = self.trainer.models.get(meter)
        model = baselines = skill = None
        if fitted is not None:
            meta = fitted.meta
            metrics = meta.get("metrics", {})
            scores = metrics.get("model") or {}
            model = {"mse": scores.get("mse"), "mae": scores.get("mae"), "mape": scores.get("mape"),
                     "n": scores.get("n"), "trained_at": meta.get("trained_at"),
                     "samples": meta.get("samples"), "train_examples": meta.get("train_examples"),
                     "test_examples": meta.get("test_examples"), "epochs": meta.get("epochs"),
                     "data_end": meta.get("data_end"), "window": fitted.window,
                     "horizon": fitted.horizon, "resolution": fitted.resolution,
                     "sklearn": meta.get("sklearn")}
            model = _rounded(model)
            baselines = {"persistence": _rounded(metrics.get("persistence")),
                         "seasonal_naive": _rounded(metrics.get("seasonal_naive"))}
            skill = meta.get("skill")
            skill = None if skill is None else round(skill, 4)
        return {"forecast": self.forecast(meter, series), "model": model,
                "baselines": baselines, "skill": skill, "resolution": self.options.resolution}
