"""The InfluxDB exporter service: buffers, batches, retries, daily summaries.

Nothing here ever runs on the meter's update path except formatting a few
lines and appending them to a bounded in-memory buffer: every write happens
later from a timer, one request in flight per destination, each bounded by
``timeout`` as a whole (headers *and* body). A dead or slow database therefore
never blocks or slows the device transports (issue item 6).

Response handling follows Telegraf (sources-sinks.md §5.3):

* 2xx: written;
* 413: the batch is too big: halve the batch size and resend (a single line
  that is still too big is dropped);
* 404 ``database not found`` (v1): create the database, then resend;
* 401, 403, 408, 429, 5xx, network errors and timeouts: keep the points and
  retry with exponential back-off and jitter (1 s → 60 s; ``Retry-After`` is
  honoured up to 600 s);
* any other 4xx: the batch is malformed or refused: drop it and log why.

When the buffer (``buffer_limit`` points per destination) is full the oldest
points are dropped and counted. Credentials travel only in the
``Authorization`` header and never appear in a log line or error message.
"""

from __future__ import annotations

import base64
import random
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from meteremu.days import Counters, DayLedger, DayStart
from meteremu.exporters.influxdb import Options
from meteremu.exporters.influxdb.lineprotocol import format_lines
from meteremu.exporters.influxdb.points import daily_points, lines, reading_points
from meteremu.exporters.prometheus import Metrics
from meteremu.httpclient import HTTPClient, describe
from meteremu.interfaces import IReactor, IReactorTime, StateStore, Values
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.reading import Reading
from meteremu.store import MemoryValues

log = logger(__name__)

BODY_LIMIT = 64 * 1024
BACKOFF_MIN = 1.0
BACKOFF_MAX = 60.0
RETRY_AFTER_MAX = 600.0
HIGH_RATE = "high_rate"
LOW_RATE = "low_rate"
_V1_PRECISION = {"s": "s", "ms": "ms", "us": "u", "ns": "ns"}


# -- HTTP ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    code: int
    body: bytes
    retry_after: float | None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: back off normally


class InfluxHTTP:
    """The HTTP room's client with InfluxDB's headers; every request bounded as a whole."""

    def __init__(self, reactor: IReactor, options: Options) -> None:
        self.client = HTTPClient(reactor, options.timeout, per_host=2, idle_timeout=120, retry=True)
        self.headers = {b"Content-Type": [b"text/plain; charset=utf-8"], b"User-Agent": [b"meteremu"]}
        auth = _authorization(options)
        if auth is not None:
            self.headers[b"Authorization"] = [auth]

    @property
    def timeout(self) -> float:
        return self.client.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self.client.timeout = value

    def post(self, url: str, body: bytes, content_type: bytes | None = None) -> Deferred[Answer]:
        headers = dict(self.headers)
        if content_type is not None:
            headers[b"Content-Type"] = [content_type]
        d = self.client.request("POST", url, headers, data=body, limit=BODY_LIMIT, truncate=True, redirects=True)
        return d.addCallback(lambda result: Answer(result.status, result.body, _retry_after(result.headers)))

    def close(self) -> Deferred[Any]:
        return self.client.close()


def _authorization(options: Options) -> bytes | None:
    if options.token:
        return b"Token " + options.token.encode("utf-8")
    if options.username is not None:
        if options.api == "v2":
            return b"Token " + f"{options.username}:{options.password or ''}".encode()
        pair = f"{options.username}:{options.password or ''}".encode()
        return b"Basic " + base64.b64encode(pair)
    return None


def _base(url: str) -> str:
    return url.rstrip("/")


def safe_url(url: str) -> str:
    """The URL as shown in logs: scheme, host, port and path only."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True)
class Target:
    """Where one destination's points go."""

    name: str  # high_rate / low_rate (the metrics label)
    write_url: str
    where: str  # for logs: "database meteremu" / "bucket meteremu"
    database: str | None = None  # v1: create it when missing
    query_url: str | None = None


def make_targets(options: Options) -> tuple[Target, Target]:
    base = _base(options.url)
    shown = safe_url(base)
    if options.api == "v1":
        def v1(name: str, db: str) -> Target:
            params = {"db": db, "precision": _V1_PRECISION[options.precision]}
            if options.retention_policy:
                params["rp"] = options.retention_policy
            return Target(name, f"{base}/write?{urlencode(params)}", f"database {db!r} at {shown}",
                          db if options.create_database else None, f"{base}/query")

        return v1(HIGH_RATE, options.database), v1(LOW_RATE, options.low_rate_database or options.database)

    def v2(name: str, bucket: str) -> Target:
        params = {"bucket": bucket, "precision": options.precision}
        if options.org:
            params = {"org": options.org, **params}
        return Target(name, f"{base}/api/v2/write?{urlencode(params)}", f"bucket {bucket!r} at {shown}")

    bucket = options.bucket or options.database
    return v2(HIGH_RATE, bucket), v2(LOW_RATE, options.low_rate_bucket or bucket)


def _quote_identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- one destination -------------------------------------------------------------


class Sink:
    """One destination's bounded buffer, batching and retries.

    ``add`` never does I/O. Writes start from ``kick`` (the flush timer, or a
    full batch), one request at a time; failed batches go back to the front
    of the buffer.
    """

    def __init__(self, target: Target, http: InfluxHTTP, clock: IReactorTime, options: Options,
                 rng: random.Random | None = None) -> None:
        self.target = target
        self.http = http
        self.clock = clock
        self.batch_size = options.batch_size
        self.limit = options.buffer_limit
        self.rng = rng or random.Random()
        self.buffer: deque[str] = deque()
        self.inflight: list[str] = []
        # health, for /metrics
        self.dropped_full = 0
        self.dropped_rejected = 0
        self.writes_ok = 0
        self.writes_failed = 0
        self.writes_rejected = 0
        self.points_written = 0
        self.last_flush: float | None = None
        self.last_error: str | None = None
        self.failures_in_a_row = 0
        self.max_batch = self.batch_size
        self.needs_database = target.database is not None
        self.retry_at: float | None = None
        self.stopped = False
        self._retry_call: Any = None
        self._kick_call: Any = None
        self._busy: Deferred[None] | None = None
        self._idle_waiters: list[Deferred[None]] = []

    # -- input (on the meter's update path: no I/O) --
    def add(self, new_lines: list[str]) -> None:
        self.buffer.extend(new_lines)
        self._trim()
        if len(self.buffer) >= self.batch_size:
            self.soon()

    def soon(self) -> None:
        """Kick from the next reactor turn (not from the caller's stack)."""
        if self._kick_call is None and self.retry_at is None and not self.stopped:
            self._kick_call = self.clock.callLater(0, self._kick_now)

    def _trim(self) -> None:
        excess = len(self.buffer) + len(self.inflight) - self.limit
        if excess > 0:
            drop = min(excess, len(self.buffer))
            for _ in range(drop):
                self.buffer.popleft()
            if self.dropped_full == 0:
                log.warn("InfluxDB buffer for {where} is full ({limit} points): dropping the oldest",
                         where=self.target.where, limit=self.limit)
            self.dropped_full += drop

    @property
    def size(self) -> int:
        return len(self.buffer) + len(self.inflight)

    # -- writing --
    def _kick_now(self) -> None:
        self._kick_call = None
        self.kick()

    def kick(self) -> None:
        """Start writing if there is something to write and nothing stops us."""
        if self.stopped or self._busy is not None or not self.buffer or self.retry_at is not None:
            return
        self._start()

    def _start(self) -> None:
        busy = self._drain()
        self._busy = busy

        def done(result: object) -> None:
            self._busy = None
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
            if isinstance(result, Failure):
                log.error("InfluxDB writer for {where} failed unexpectedly: {why}",
                          where=self.target.where, why=describe(result, self.http.timeout))

        busy.addBoth(done)

    def when_idle(self) -> Deferred[None]:
        if self._busy is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    @inlineCallbacks
    def flush(self) -> Any:
        """Write everything buffered now, ignoring any back-off; fires when done.

        Stops at the first failure (the points stay buffered).
        """
        while self._busy is not None:  # several callers may wait on the same write
            yield self.when_idle()
        if self.retry_at is not None:
            self._cancel_retry()
        if self.buffer and not self.stopped:
            self._start()
            yield self.when_idle()

    @inlineCallbacks
    def _drain(self) -> Any:
        recreated = False
        while self.buffer and not self.stopped:
            if self.needs_database:
                ok = yield self._create_database()
                if not ok:
                    return
            count = min(self.max_batch, len(self.buffer))
            self.inflight = [self.buffer.popleft() for _ in range(count)]
            try:
                answer = yield self.http.post(self.target.write_url, format_lines(self.inflight))
            except Exception as exc:
                self._retry_later(describe(exc, self.http.timeout))
                return
            code = answer.code
            if 200 <= code < 300:
                self._written()
                continue
            detail = _error_text(answer.body)
            if code == 413:
                if len(self.inflight) > 1:
                    self.max_batch = max(1, len(self.inflight) // 2)
                    log.info("InfluxDB at {where} refused {n} points as too large: batches of {m} from now on",
                             where=self.target.where, n=len(self.inflight), m=self.max_batch)
                    self._requeue()
                    continue
                self._reject(code, detail)
                continue
            if code == 404 and b"database not found" in answer.body:
                if self.target.database is not None and not recreated:
                    recreated = True  # dropped while we ran? create it once more
                    self.needs_database = True
                    self._requeue()
                    continue
                # Keep the points: someone may create it (or grant the rights).
                self._retry_later(f"HTTP 404: {detail}", answer.retry_after)
                return
            if code in (401, 403, 408, 429) or code >= 500 or code < 200 or 300 <= code < 400:
                self._retry_later(f"HTTP {code}{': ' + detail if detail else ''}", answer.retry_after)
                return
            self._reject(code, detail)

    def _written(self) -> None:
        n = len(self.inflight)
        self.inflight = []
        self.writes_ok += 1
        self.points_written += n
        self.last_flush = self.clock.seconds()
        if self.failures_in_a_row:
            log.info("InfluxDB writes to {where} work again after {n} failed attempts",
                     where=self.target.where, n=self.failures_in_a_row)
        self.failures_in_a_row = 0
        self.last_error = None

    def _requeue(self) -> None:
        self.buffer.extendleft(reversed(self.inflight))
        self.inflight = []
        self._trim()

    def _reject(self, code: int, detail: str) -> None:
        n = len(self.inflight)
        self.inflight = []
        self.writes_rejected += 1
        self.dropped_rejected += n
        self.last_error = f"HTTP {code}: {detail}" if detail else f"HTTP {code}"
        log.warn("InfluxDB at {where} rejected {n} points (HTTP {code}: {detail}); dropped them",
                 where=self.target.where, n=n, code=code, detail=detail or "no details")

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Exponential with jitter: 1 s → 60 s; never below a ``Retry-After``."""
        ceiling = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** max(0, failures - 1))
        delay = self.rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_MAX))
        return delay

    def _retry_later(self, why: str, retry_after: float | None = None) -> None:
        self._requeue()
        self.writes_failed += 1
        self.failures_in_a_row += 1
        self.last_error = why
        delay = self.backoff(self.failures_in_a_row, retry_after)
        if self.failures_in_a_row == 1:
            log.warn("InfluxDB write to {where} failed ({why}); keeping {n} points, retrying with back-off",
                     where=self.target.where, why=why, n=self.size)
        else:
            log.debug("InfluxDB write to {where} failed again ({why}); retry in {delay:.1f} s",
                      where=self.target.where, why=why, delay=delay)
        if self.stopped:
            return
        self.retry_at = self.clock.seconds() + delay
        self._retry_call = self.clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry_call = None
        self.retry_at = None
        self.kick()

    def _cancel_retry(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        self.retry_at = None

    @inlineCallbacks
    def _create_database(self) -> Any:
        """``CREATE DATABASE`` (v1; idempotent). False: retry later."""
        db = self.target.database
        assert db is not None and self.target.query_url is not None
        body = urlencode({"q": f"CREATE DATABASE {_quote_identifier(db)}"}).encode()
        try:
            answer = yield self.http.post(self.target.query_url, body, b"application/x-www-form-urlencoded")
        except Exception as exc:
            self._retry_later(describe(exc, self.http.timeout))
            return False
        if answer.code in (429,) or answer.code >= 500:
            self._retry_later(f"HTTP {answer.code} creating the database", answer.retry_after)
            return False
        self.needs_database = False
        detail = _error_text(answer.body)
        if answer.code != 200 or b'"error"' in answer.body:
            log.warn("could not create InfluxDB {where} (HTTP {code}: {detail}); writing anyway",
                     where=self.target.where, code=answer.code, detail=detail or "no details")
        else:
            log.info("InfluxDB {where} is ready (created if it was missing)", where=self.target.where)
        return True

    def stop(self) -> None:
        self.stopped = True
        self._cancel_retry()
        if self._kick_call is not None and self._kick_call.active():
            self._kick_call.cancel()
        self._kick_call = None


def _error_text(body: bytes, limit: int = 300) -> str:
    """The server's error message, shortened, on one line."""
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- health in /metrics ------------------------------------------------------------


class InfluxCollector(Collector):
    def __init__(self, sinks: Callable[[], list[Sink]]) -> None:
        self._sinks = sinks

    def collect(self) -> Iterator[Metric]:
        label = ["destination"]
        size = GaugeMetricFamily("meteremu_influxdb_buffered_points", "Points waiting to be written", labels=label)
        drops = CounterMetricFamily("meteremu_influxdb_dropped_points",
                                    "Points dropped: buffer full (oldest first) or rejected by the server",
                                    labels=["destination", "reason"])
        writes = CounterMetricFamily("meteremu_influxdb_writes", "Write requests by result",
                                     labels=["destination", "result"])
        points = CounterMetricFamily("meteremu_influxdb_points_written", "Points written", labels=label)
        last = GaugeMetricFamily("meteremu_influxdb_last_flush_timestamp_seconds",
                                 "Time of the last successful write", labels=label)
        for sink in self._sinks():
            name = sink.target.name
            size.add_metric([name], sink.size)
            drops.add_metric([name, "buffer_full"], sink.dropped_full)
            drops.add_metric([name, "rejected"], sink.dropped_rejected)
            writes.add_metric([name, "ok"], sink.writes_ok)
            writes.add_metric([name, "failed"], sink.writes_failed)
            writes.add_metric([name, "rejected"], sink.writes_rejected)
            points.add_metric([name], sink.points_written)
            if sink.last_flush is not None:
                last.add_metric([name], sink.last_flush)
        yield from (size, drops, writes, points, last)


# -- the service -------------------------------------------------------------------


class InfluxExporter(Service):
    """Follows the meter set, writes points, writes a daily summary when a day ends.

    ``reactor`` does the I/O (and bounds each request); ``clock`` drives the
    flush timer and back-off (tests pass a ``Clock``). Days come from the
    application's :class:`~meteremu.days.DayLedger` (``days``); without one
    the exporter keeps its own, on ``clock``, in ``options.timezone``.
    """

    name = "influxdb"

    def __init__(self, options: Options, meters: MeterSet, reactor: IReactor, metrics: Metrics | None = None,
                 store: StateStore | None = None, clock: IReactorTime | None = None,
                 rng: random.Random | None = None, days: DayLedger | None = None) -> None:
        self.options = options
        self.meters = meters
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.store: Values = store if store is not None else MemoryValues()
        self.precision = options.precision
        self.http = InfluxHTTP(reactor, options)
        high, low = make_targets(options)
        self.high = Sink(high, self.http, self.clock, options, rng)
        self.low = Sink(low, self.http, self.clock, options, rng)
        self._own_days = days is None
        self.days = days if days is not None else DayLedger(
            meters, self.store, self.clock, ZoneInfo(options.timezone) if options.timezone else None)
        self.days.subscribe(self._day_ended)  # now: a stored earlier day is told at the ledger's start
        self._meters: dict[str, Meter] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._loop: LoopingCall | None = None
        self._reading_errors = 0
        self._registry = metrics.registry if metrics is not None else None
        self._collector = InfluxCollector(lambda: [self.high, self.low])

    @property
    def tz(self) -> tzinfo | None:
        return self.days.tz

    @property
    def day_starts(self) -> dict[str, DayStart]:
        """Today's counter snapshot per meter (the ledger's)."""
        return self.days.starts

    @property
    def sinks(self) -> list[Sink]:
        return [self.high, self.low]

    # -- lifecycle --
    def startService(self) -> None:
        super().startService()
        if self._registry is not None:
            self._registry.register(self._collector)
        log.info("InfluxDB exporter writing to {high} (daily summaries to {low})",
                 high=self.high.target.where, low=self.low.target.where)
        if self._own_days:
            self.days.startService()
        self._unsubscribe = self.meters.subscribe(self._meter_added, self._meter_removed)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.options.flush_interval, now=False).addErrback(
            lambda f: log.error("InfluxDB flush timer stopped: {why}", why=describe(f, self.options.timeout)))
        # Write whatever a restart found (e.g. yesterday's summary) soon.
        for sink in self.sinks:
            if sink.buffer:
                sink.soon()

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self._registry is not None:
            self._registry.unregister(self._collector)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for meter in list(self._meters.values()):
            meter.remove_listener(self._on_reading)
        self._meters.clear()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._own_days and self.days.running:
            self.days.stopService()
        try:
            yield DeferredList([self._last_flush(sink) for sink in self.sinks], consumeErrors=True)
        finally:
            yield self.http.close()

    @inlineCallbacks
    def _last_flush(self, sink: Sink) -> Any:
        """Let a write in flight end, then write the rest, unless the database
        is known to be failing (that would only delay the stop by a timeout)."""
        yield sink.when_idle()
        if sink.retry_at is None:
            yield sink.flush()
        sink.stop()
        if sink.size:
            log.warn("InfluxDB exporter stopped with {n} unwritten points for {where}",
                     n=sink.size, where=sink.target.where)

    def flush(self) -> Deferred[None]:
        """Write everything buffered now (tests, shutdown). Fires when done."""
        d = self.high.flush()
        d.addCallback(lambda _: self.low.flush())
        return d

    def _tick(self) -> None:
        for sink in self.sinks:
            sink.kick()

    # -- meters --
    def _meter_added(self, meter: Meter) -> None:
        self._meters[meter.name] = meter
        meter.add_listener(self._on_reading)
        if meter.latest is not None:
            # A reading from before we listened (sources start first). Writing
            # it twice is harmless: same series and time, same values.
            self._on_reading(meter, meter.latest)

    def _meter_removed(self, meter: Meter) -> None:
        meter.remove_listener(self._on_reading)
        self._meters.pop(meter.name, None)

    def _on_reading(self, meter: Meter, reading: Reading) -> None:
        """On the meter's update path: format and buffer, never raise, no I/O."""
        try:
            start = self.days.start_of_day(meter)
            points = reading_points(meter, reading, start.counters if start is not None else None)
            self.high.add(lines(points, self.precision))
        except Exception as exc:
            self._reading_errors += 1
            if self._reading_errors == 1:
                log.error("InfluxDB exporter could not format a reading of {meter}: {why}",
                          meter=meter.name, why=f"{type(exc).__name__}: {exc}")

    # -- days --
    def _day_ended(self, meter: Meter, start: DayStart, end: Counters, complete: bool) -> None:
        """The ledger ended a day of ``meter``: write its summary (at the next flush)."""
        points = daily_points(meter.name, meter.source_type, start, end, complete, self.tz)
        self.low.add(lines(points, self.precision))
        log.info("daily energy of {meter} for {day}: {imp:.0f} Wh import, {exp:.0f} Wh export",
                 meter=meter.name, day=start.day.isoformat(),
                 imp=sum(max(0.0, e[0] - s[0]) for s, e in zip(start.counters, end, strict=False)),
                 exp=sum(max(0.0, e[1] - s[1]) for s, e in zip(start.counters, end, strict=False)))
        if self.running:
            self.low.kick()
