"""Backfill: write a source's computed past (:mod:`meteremu.past`) into the forecast dataset.

Why: a first start would otherwise chart an empty hour and wait hours for a
first model. The simulator can compute its household for the past, so the
dataset gets the same household's history at start, labelled as simulated.

How it stays out of the way:

- **Bounded slices on the reactor thread.** ``SLICE_BUCKETS`` buckets (a few
  milliseconds of work) are computed per reactor turn, then the reactor runs
  whatever else is due; the household is pure Python, so a thread would only
  fight the reactor for the GIL.
- **Bounded memory.** At most ``WRITE_BUCKETS`` rows exist at a time: each
  batch is written in one transaction (the store's single connection, off the
  reactor thread) and awaited before the next one is computed.
- **Newest first.** The buckets next to the live data come first, so a stop
  half-way leaves one contiguous history that the next start extends.
- **Never duplicated.** Before it computes anything, the run asks the store
  what it already holds for the meter before the live data, and fills only
  the buckets before the first and after the last stored one (rows are
  ``INSERT OR IGNORE`` besides: a live bucket is never overwritten).
- **Interrupted cleanly.** :meth:`Backfiller.stop` lets the transaction in
  flight finish and computes nothing more; what was written is whole.

Each written range is recorded in ``forecast_backfill`` with the offer's
label, so the dashboard can say which part of the history is backfilled.

:func:`plan`, :func:`chunks` and :func:`compute` are pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import deferLater

from meteremu.interfaces import IReactorTime, StateStore
from meteremu.logs import logger
from meteremu.past import Past

log = logger(__name__)

SAMPLES_TABLE = "forecast_samples"
TABLE = "forecast_backfill"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    meter TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (meter, start)
) WITHOUT ROWID
"""

SLICE_BUCKETS = 240  # computed per reactor turn: about 5 ms of the household model
WRITE_BUCKETS = 4320  # rows per transaction (12 h at 10 s): the most held in memory at once

Row = tuple[str, float, float, float, float, float, int]


def plan(lo: float, hi: float, stored: tuple[float, float] | None,
         resolution: float) -> list[tuple[int, int]]:
    """Bucket indexes ``[k0, k1)`` to compute, newest range first.

    Whole buckets inside ``[lo, hi)``, less those from the first to the last
    bucket already ``stored`` (``(first ts, last ts)``, or ``None``): what is
    stored is kept as it is, gaps inside it included (they are real silences).
    """
    k_lo = math.ceil(lo / resolution)
    k_hi = math.floor(hi / resolution)  # the bucket holding ``hi`` is the live one
    if k_hi <= k_lo:
        return []
    if stored is None:
        return [(k_lo, k_hi)]
    first = round(stored[0] / resolution)
    last = round(stored[1] / resolution)
    out = []
    if max(k_lo, last + 1) < k_hi:
        out.append((max(k_lo, last + 1), k_hi))
    if k_lo < min(k_hi, first):
        out.append((k_lo, min(k_hi, first)))
    return out


def chunks(k0: int, k1: int, size: int, newest_first: bool = True) -> Iterator[tuple[int, int]]:
    """``[k0, k1)`` cut into pieces of at most ``size`` buckets."""
    if newest_first:
        end = k1
        while end > k0:
            yield max(k0, end - size), end
            end -= size
    else:
        start = k0
        while start < k1:
            yield start, min(k1, start + size)
            start += size


def compute(meter: str, past: Past, k0: int, k1: int, resolution: float) -> list[Row]:
    """One row per bucket ``k`` in ``[k0, k1)``: the source at the bucket's middle (``n`` = 1).

    One sample per bucket keeps 14 days at 10 s to a few seconds of work; the
    live dataset's buckets are means of several readings of the same model.
    """
    rows: list[Row] = []
    half = resolution / 2
    for k in range(k0, k1):
        ts = k * resolution
        total, a, b, c = past.power_at(ts + half)
        rows.append((meter, ts, total, a, b, c, 1))
    return rows


# -- store interactions (the store's connection thread) --------------------------


def _extent(txn: Any, meter: str, before: float) -> tuple[float, float] | None:
    """First and last stored bucket of ``meter`` before the live data starts."""
    from meteremu.forecast.dataset import SCHEMA as SAMPLES_SCHEMA  # (it imports this module)

    txn.execute(SAMPLES_SCHEMA)
    txn.execute(SCHEMA)
    txn.execute(f"SELECT MIN(ts), MAX(ts) FROM {SAMPLES_TABLE} WHERE meter = ? AND ts < ?",
                (meter, before))
    row = txn.fetchone()
    if row is None or row[0] is None:
        return None
    return float(row[0]), float(row[1])


def _write(txn: Any, rows: list[Row], meter: str, start: float, end: float, label: str) -> None:
    """The rows and the range they cover, in one transaction (never over a stored bucket)."""
    txn.executemany(
        f"INSERT OR IGNORE INTO {SAMPLES_TABLE}(meter, ts, total, a, b, c, n) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    txn.execute(SCHEMA)
    txn.execute(f"UPDATE {TABLE} SET start = ? WHERE meter = ? AND start = ? AND label = ?",
                (start, meter, end, label))
    if txn.rowcount > 0:
        return
    txn.execute(f"UPDATE {TABLE} SET end = ? WHERE meter = ? AND end = ? AND label = ?",
                (end, meter, start, label))
    if txn.rowcount > 0:
        return
    txn.execute(f"INSERT OR REPLACE INTO {TABLE}(meter, start, end, label) VALUES (?, ?, ?, ?)",
                (meter, start, end, label))


def ranges(txn: Any, meter: str, since: float, until: float) -> list[tuple[float, float, str]]:
    """Backfilled ``(start, end, label)`` ranges of ``meter`` overlapping ``[since, until)``."""
    txn.execute(SCHEMA)
    txn.execute(f"SELECT start, end, label FROM {TABLE} WHERE meter = ? AND end > ? AND start < ? "
                "ORDER BY start", (meter, since, until))
    return [(float(s), float(e), str(label)) for s, e, label in txn.fetchall()]


def observe(d: Deferred[Any]) -> Deferred[None]:
    """A new Deferred that fires (with ``None``) when ``d`` does; ``d``'s result is untouched."""
    seen: Deferred[None] = Deferred()

    def tell(result: object) -> object:
        seen.callback(None)
        return result

    d.addBoth(tell)
    return seen


def add_range(ranges: list[tuple[float, float, str]], start: float, end: float,
              label: str) -> list[tuple[float, float, str]]:
    """Pure: ``ranges`` with ``[start, end)`` added, touching ranges of one label joined."""
    out: list[tuple[float, float, str]] = []
    for s0, e0, l0 in sorted([*ranges, (start, end, label)]):
        if out and out[-1][2] == l0 and s0 <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e0), l0)
        else:
            out.append((s0, e0, l0))
    return out


class Backfiller:
    """One meter's backfill run: ``start()`` once, ``stop()`` to end it early."""

    def __init__(self, meter: str, past: Past, store: StateStore, clock: IReactorTime,
                 resolution: float, retention: float,
                 on_rows: Callable[[list[Row]], None] | None = None) -> None:
        self.meter = meter
        self.past = past
        self.store = store
        self.clock = clock
        self.resolution = resolution
        self.retention = retention
        self.on_rows = on_rows
        self.state = "waiting"  # running, done, stopped, failed
        self.written = 0
        self.planned = 0
        self.error: str | None = None
        self._stopping = False
        self._run: Deferred[int] | None = None

    def start(self) -> Deferred[int]:
        """Run; fires with the number of buckets written (also after a stop), never fails."""
        if self._run is None and self._stopping:
            return succeed(0)  # stopped before it began (a stop while an older run was ending)
        if self._run is None:
            self.state = "running"
            self._run = ensureDeferred(self._go())
            self._run.addErrback(self._failed)
        return self._run

    def stop(self) -> Deferred[Any]:
        """Compute nothing more; fires once the transaction in flight (if any) is done."""
        self._stopping = True
        if self._run is None:
            self.state = "stopped"
            return succeed(None)
        return observe(self._run)

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "written": self.written, "planned": self.planned,
                "from": self.past.start, "to": self.past.end, "label": self.past.label,
                "error": self.error}

    def _failed(self, failure: Any) -> int:
        self.state = "failed"
        self.error = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        log.failure("forecast backfill of {meter} failed", failure, meter=self.meter)
        return self.written

    async def _go(self) -> int:
        past, res = self.past, self.resolution
        stored = await self.store.run_interaction(_extent, self.meter, past.end)
        lo = max(past.start, past.end - self.retention)
        todo = plan(lo, past.end, stored, res)
        self.planned = sum(k1 - k0 for k0, k1 in todo)
        if self.planned:
            log.info("forecast dataset: backfilling {n} buckets of {meter} ({label})",
                     n=self.planned, meter=self.meter, label=past.label)
        for k0, k1 in todo:
            for c0, c1 in chunks(k0, k1, WRITE_BUCKETS):
                rows: list[Row] = []
                for s0, s1 in chunks(c0, c1, SLICE_BUCKETS, newest_first=False):
                    if self._stopping:
                        return self._end("stopped")
                    rows.extend(compute(self.meter, past, s0, s1, res))
                    await deferLater(self.clock, 0, lambda: None)  # let the reactor run
                if self._stopping:
                    return self._end("stopped")
                await self.store.run_interaction(_write, rows, self.meter, c0 * res, c1 * res, past.label)
                self.written += len(rows)
                if self.on_rows is not None:
                    self.on_rows(rows)
        return self._end("done")

    def _end(self, state: str) -> int:
        self.state = state
        if self.planned:
            log.info("forecast dataset: backfill of {meter} {state}: {n} of {planned} buckets written",
                     meter=self.meter, state=state, n=self.written, planned=self.planned)
        return self.written
