"""The forecast dataset: each meter's power, averaged per ``resolution`` bucket.

Buckets are keyed by the *reading's own* timestamp (``Reading.measured_at``),
not by arrival, so a simulator running at ``speed: 600`` fills days of data in
minutes, and a source's late delivery does not smear its samples. A bucket is
``[k·resolution, (k+1)·resolution)``; its value is the mean of the readings in
it. A bucket is finished when a reading of a later bucket arrives.

Finished buckets are queued and written every ``flush_interval`` in *one*
transaction through :meth:`Store.run_interaction` (the store's single
connection, off the reactor thread); the same transaction prunes rows older
than ``retention`` before the newest sample. The reactor thread only appends to
a list. The last few hours of buckets are also kept in memory per meter, for
the dashboard's chart and the model's input.

Backfill: a meter whose source offers its computed past (only the simulator,
:mod:`meteremu.past`) gets it written by a :class:`~meteremu.forecast.backfill.Backfiller`
at start; :meth:`Dataset.settled` tells the trainer when that is done, and the
backfilled ranges are kept (with their label) for the dashboard.

Reads for the chart (:meth:`Dataset.window`) come from the in-memory buckets
when they reach back far enough, else from the store, averaged per chart slot
in SQLite.

:class:`Bucketer` is pure (no reactor, no I/O); :class:`Dataset` is the thin
Service around it. No numpy here: this module loads only when forecasting is
on, but stays cheap anyway.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import LoopingCall

from meteremu.forecast import ForecastOptions
from meteremu.forecast.backfill import Backfiller, Row, add_range, observe
from meteremu.forecast.backfill import ranges as stored_ranges
from meteremu.interfaces import IReactorTime, StateStore
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.past import Past
from meteremu.reading import Reading

log = logger(__name__)

TABLE = "forecast_samples"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    meter TEXT NOT NULL,
    ts REAL NOT NULL,
    total REAL NOT NULL,
    a REAL NOT NULL,
    b REAL NOT NULL,
    c REAL NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (meter, ts)
) WITHOUT ROWID
"""

RECENT_SPAN = 6 * 3600.0  # seconds of buckets kept in memory per meter (the chart's longest span)
MAX_PENDING = 200_000  # buckets queued while the store fails; the oldest are dropped beyond


@dataclass(frozen=True, slots=True)
class Bucket:
    """The mean power of one meter over ``[ts, ts + resolution)``; ``n`` readings."""

    ts: float
    total: float
    a: float
    b: float
    c: float
    n: int

    def row(self, meter: str) -> tuple[str, float, float, float, float, float, int]:
        return (meter, self.ts, self.total, self.a, self.b, self.c, self.n)


def bucket_start(ts: float, resolution: float) -> float:
    """The start of the bucket holding ``ts``: ``floor(ts / resolution) · resolution``."""
    return math.floor(ts / resolution) * resolution


class Bucketer:
    """Pure: mean of readings per bucket of one meter, by the readings' timestamps."""

    def __init__(self, resolution: float) -> None:
        self.resolution = resolution
        self._start: float | None = None
        self._sums = [0.0, 0.0, 0.0, 0.0]
        self._n = 0

    def add(self, ts: float, total: float, a: float, b: float, c: float) -> Bucket | None:
        """Add one sample; return the bucket it finished, if any.

        A sample older than the open bucket (out of order) is dropped: the
        bucket before was already handed out.
        """
        start = bucket_start(ts, self.resolution)
        finished = None
        if self._start is not None and start < self._start:
            return None
        if self._start is not None and start > self._start:
            finished = self.close()
        if self._start is None:
            self._start = start
        for i, value in enumerate((total, a, b, c)):
            self._sums[i] += value
        self._n += 1
        return finished

    def close(self) -> Bucket | None:
        """Finish the open bucket now (at stop) and return it, if there is one."""
        if self._start is None or self._n == 0:
            self._start = None
            return None
        n = self._n
        total, a, b, c = (s / n for s in self._sums)
        bucket = Bucket(self._start, total, a, b, c, n)
        self._start, self._sums, self._n = None, [0.0, 0.0, 0.0, 0.0], 0
        return bucket


def merge_series(existing: Iterable[tuple[float, float]], new: Iterable[tuple[float, float]],
                 size: int) -> deque[tuple[float, float]]:
    """Pure: both series by time, at most ``size`` newest points; ``existing`` wins a tie."""
    points = {ts: value for ts, value in new}
    points.update(existing)
    return deque(sorted(points.items()), maxlen=size)


def bucket_readings(readings: Iterable[tuple[float, float, float, float, float]],
                    resolution: float) -> list[Bucket]:
    """Pure helper: every bucket of ``(ts, total, a, b, c)`` samples, the last one included."""
    bucketer = Bucketer(resolution)
    out = [b for b in (bucketer.add(*r) for r in readings) if b is not None]
    last = bucketer.close()
    if last is not None:
        out.append(last)
    return out


# -- store interactions (run on the store's connection thread) ---------------


def _init(txn: Any) -> None:
    txn.execute(SCHEMA)


def _write(txn: Any, rows: list[tuple[Any, ...]], prune: dict[str, float]) -> int:
    """Insert (or replace) buckets and prune old rows, in one transaction."""
    txn.execute(SCHEMA)
    txn.executemany(
        f"INSERT INTO {TABLE}(meter, ts, total, a, b, c, n) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(meter, ts) DO UPDATE SET total=excluded.total, a=excluded.a, "
        "b=excluded.b, c=excluded.c, n=excluded.n", rows)
    pruned = 0
    for meter, before in prune.items():
        txn.execute(f"DELETE FROM {TABLE} WHERE meter = ? AND ts < ?", (meter, before))
        pruned += max(0, txn.rowcount)
    return pruned


def _read(txn: Any, meter: str, since: float | None, limit: int | None) -> list[tuple[float, float]]:
    """``(ts, total)`` rows of one meter, oldest first."""
    txn.execute(SCHEMA)
    if limit is not None:
        txn.execute(f"SELECT ts, total FROM {TABLE} WHERE meter = ? ORDER BY ts DESC LIMIT ?",
                    (meter, limit))
        return list(reversed(txn.fetchall()))
    txn.execute(f"SELECT ts, total FROM {TABLE} WHERE meter = ? AND ts >= ? ORDER BY ts",
                (meter, since if since is not None else -math.inf))
    return txn.fetchall()


def _read_slots(txn: Any, meter: str, since: float, until: float, step: float) -> list[tuple[float, float]]:
    """Mean ``total`` per ``step``-wide slot of one meter over ``[since, until)``, oldest first."""
    txn.execute(SCHEMA)
    txn.execute(f"SELECT CAST(ts / ? + 1e-9 AS INTEGER) AS k, AVG(total) FROM {TABLE} "
                "WHERE meter = ? AND ts >= ? AND ts < ? GROUP BY k ORDER BY k",
                (step, meter, since, until))
    return [(k * step, float(total)) for k, total in txn.fetchall()]


def _latest(txn: Any, meter: str) -> float | None:
    txn.execute(SCHEMA)
    txn.execute(f"SELECT MAX(ts) FROM {TABLE} WHERE meter = ?", (meter,))
    row = txn.fetchone()
    return None if row is None else row[0]


class Dataset(Service):
    """Samples every meter of a MeterSet into the store; keeps recent buckets in memory."""

    name = "forecast-dataset"

    def __init__(self, meters: MeterSet, store: StateStore, options: ForecastOptions,
                 clock: IReactorTime) -> None:
        self.meters = meters
        self.store = store
        self.options = options
        self.clock = clock
        self.resolution = options.resolution
        size = int(math.ceil(RECENT_SPAN / options.resolution)) + options.window + 1
        self.recent: dict[str, deque[tuple[float, float]]] = {}
        self._recent_size = size
        self._bucketers: dict[str, Bucketer] = {}
        self._latest: dict[str, float] = {}
        self._pending: list[tuple[Any, ...]] = []
        self._writing: Deferred[Any] | None = None
        self._loop: LoopingCall | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._listening: dict[str, Meter] = {}
        self.backfills: dict[str, Backfiller] = {}
        self._backfill_runs: dict[str, Deferred[Any]] = {}
        self.backfill_ranges: dict[str, list[tuple[float, float, str]]] = {}
        self.written = 0
        self.pruned = 0

    # -- meters ------------------------------------------------------------------
    def _added(self, meter: Meter) -> None:
        name = meter.name
        self._bucketers.setdefault(name, Bucketer(self.resolution))
        self.recent.setdefault(name, deque(maxlen=self._recent_size))
        meter.add_listener(self._on_reading)
        self._listening[name] = meter
        self.store.run_interaction(_read, name, None, self._recent_size).addCallbacks(
            lambda rows, name=name: self._merge_recent(name, rows),
            lambda f: log.failure("reading recent forecast samples failed", f))
        self.store.run_interaction(stored_ranges, name, -math.inf, math.inf).addCallbacks(
            lambda found, name=name: self._add_ranges(name, found),
            lambda f: log.failure("reading backfilled ranges failed", f))
        meter.add_past_listener(self._on_past)

    def _add_ranges(self, name: str, found: list[tuple[float, float, str]]) -> None:
        for start, end, label in found:
            self.backfill_ranges[name] = add_range(self.backfill_ranges.get(name, []), start, end, label)

    def _removed(self, meter: Meter) -> None:
        meter.remove_listener(self._on_reading)
        meter.remove_past_listener(self._on_past)
        job = self.backfills.get(meter.name)
        if job is not None:
            job.stop()
        self._listening.pop(meter.name, None)
        bucket = self._bucketers.pop(meter.name, Bucketer(self.resolution)).close()
        if bucket is not None:
            self._finished(meter.name, bucket)

    def _merge_recent(self, name: str, rows: Iterable[tuple[float, float]]) -> None:
        """Stored rows (at start, or just backfilled) into the in-memory recent buckets."""
        recent = self.recent.get(name)
        if recent is None:
            return
        rows = [(float(ts), float(total)) for ts, total in rows]
        if not rows:
            return
        if len(recent) == recent.maxlen and max(ts for ts, _ in rows) < recent[0][0]:
            return  # all older than a full window: nothing to keep
        merged = merge_series(recent, rows, self._recent_size)
        self.recent[name] = merged
        self._latest[name] = max(self._latest.get(name, -math.inf), merged[-1][0])

    # -- backfill (a source's computed past, meteremu.past) --------------------------
    def _on_past(self, meter: Meter, past: Past) -> None:
        if not self.running:
            return
        name = meter.name
        old = self.backfills.get(name)
        job = Backfiller(name, past, self.store, self.clock, self.resolution, self.options.retention,
                         on_rows=partial(self._backfilled, name))
        self.backfills[name] = job
        before = old.stop() if old is not None else succeed(None)
        self._backfill_runs[name] = before.addCallback(lambda _: job.start())

    def _backfilled(self, name: str, rows: list[Row]) -> None:
        self._merge_recent(name, ((row[1], row[2]) for row in rows))
        job = self.backfills.get(name)
        if rows and job is not None:
            self._add_ranges(name, [(rows[0][1], rows[-1][1] + self.resolution, job.past.label)])

    def settled(self) -> Deferred[None]:
        """Fires when every backfill started so far has ended (at once if there is none)."""
        waits = [observe(run) for run in self._backfill_runs.values()]
        return gatherResults(waits).addCallback(lambda _: None)

    def backfill_status(self, name: str) -> dict[str, Any] | None:
        job = self.backfills.get(name)
        return None if job is None else job.status()

    def _on_reading(self, meter: Meter, reading: Reading) -> None:
        bucketer = self._bucketers.get(meter.name)
        if bucketer is None:
            return
        p = reading.phase
        bucket = bucketer.add(reading.measured_at, reading.total_act_power,
                              p(0).act_power, p(1).act_power, p(2).act_power)
        if bucket is not None:
            self._finished(meter.name, bucket)

    def _finished(self, name: str, bucket: Bucket) -> None:
        self.recent.setdefault(name, deque(maxlen=self._recent_size)).append((bucket.ts, bucket.total))
        self._latest[name] = max(self._latest.get(name, -math.inf), bucket.ts)
        self._pending.append(bucket.row(name))
        if len(self._pending) > MAX_PENDING:
            dropped = len(self._pending) - MAX_PENDING
            del self._pending[:dropped]
            log.warn("forecast dataset: the store is behind; dropped {n} old samples", n=dropped)

    # -- reads -----------------------------------------------------------------------
    def series(self, name: str) -> list[tuple[float, float]]:
        """Recent finished buckets ``(ts, total W)`` of a meter, oldest first."""
        return list(self.recent.get(name, ()))

    def window(self, name: str, since: float, step: float) -> Deferred[list[tuple[float, float]]]:
        """Finished buckets from ``since`` on, for the chart.

        From memory when the recent buckets reach back that far (or are all
        there is), else the older part from the store as means per ``step``
        slot (aggregated in SQLite, off the reactor thread) plus memory.
        """
        recent = list(self.recent.get(name, ()))
        covered = bool(recent) and (recent[0][0] <= since or len(recent) < self._recent_size)
        if covered or not recent:
            if not recent:
                return self.store.run_interaction(_read_slots, name, since, math.inf, step)
            return succeed([p for p in recent if p[0] >= since])
        d = self.store.run_interaction(_read_slots, name, since, recent[0][0], step)
        return d.addCallback(lambda older: older + recent)

    def load(self, name: str) -> Deferred[list[tuple[float, float]]]:
        """Every retained ``(ts, total)`` row of a meter (for training), oldest first.

        Queued buckets are written first (the store runs interactions in order
        on its one connection), so a training run sees everything finished so far.
        """
        self.flush()

        def since(latest: float | None) -> Deferred[list[tuple[float, float]]]:
            start = None if latest is None else latest - self.options.retention
            return self.store.run_interaction(_read, name, start, None)

        return self.store.run_interaction(_latest, name).addCallback(since)

    # -- writes ----------------------------------------------------------------------
    def flush(self) -> Deferred[Any]:
        """Write queued buckets and prune, in one transaction; never two at once."""
        if self._writing is not None:
            return self._writing
        if not self._pending:
            return succeed(None)
        rows, self._pending = self._pending, []
        prune = {name: latest - self.options.retention for name, latest in self._latest.items()}
        d = self.store.run_interaction(_write, rows, prune)

        def done(pruned: int) -> None:
            self.written += len(rows)
            self.pruned += pruned

        def failed(failure: Any) -> None:
            log.failure("writing {n} forecast samples failed; will retry", failure, n=len(rows))
            self._pending[:0] = rows
            if len(self._pending) > MAX_PENDING:
                del self._pending[:len(self._pending) - MAX_PENDING]

        def finished(result: object) -> object:
            self._writing = None
            return result

        d.addCallbacks(done, failed).addBoth(finished)
        self._writing = d
        return d

    # -- service ---------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self.store.run_interaction(_init).addErrback(
            lambda f: log.failure("creating the forecast table failed", f))
        self._unsubscribe = self.meters.subscribe(self._added, self._removed)
        self._loop = LoopingCall(self.flush)
        self._loop.clock = self.clock
        self._loop.start(self.options.flush_interval, now=False).addErrback(
            lambda f: log.failure("forecast flush loop stopped", f))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for meter in list(self._listening.values()):
            meter.remove_listener(self._on_reading)
            meter.remove_past_listener(self._on_past)
        self._listening.clear()
        backfills = [job.stop() for job in self.backfills.values()]
        # The open buckets are written as they are (a mean of fewer readings).
        for name, bucketer in self._bucketers.items():
            bucket = bucketer.close()
            if bucket is not None:
                self._finished(name, bucket)
        d = gatherResults(backfills + [self._writing or succeed(None)], consumeErrors=True)
        d.addBoth(lambda _: self.flush())
        return d
