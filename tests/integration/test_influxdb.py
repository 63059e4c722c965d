"""InfluxDB exporter: line protocol, points, daily summaries, writes and retries.

Pure parts are table-driven; the write path is tested against a loopback
HTTP server that records the exact requests (v1 and v2 bytes, retries, 413
splits), against Debian's influxd 1.6 (written data is queried back), and
against VictoriaMetrics for the v2 API. Time for the flush timer, back-off and
midnight is a ``task.Clock``; HTTP runs on the real reactor, every wait bounded.
"""

from __future__ import annotations

import base64
import random
import time
from dataclasses import dataclass
from datetime import date
from typing import Any

from prometheus_client.utils import floatToGoString
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from meteremu.days import DayStart, store_key
from meteremu.exporters.influxdb import Options
from meteremu.exporters.influxdb.service import InfluxExporter, describe, safe_url
from meteremu.exporters.prometheus import Metrics
from meteremu.logs import set_level
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.reading import PhaseReading, Reading
from meteremu.store import Store
from tests.support import asyncio_reactor_skip, start_app, test_config
from tests.support.influxd import start_influxd, start_victoria_metrics
from tests.support.shared.influxdb import (
    MAR30_2200,
    MAR31_0000,
    PASSWORD,
    TOKEN,
    set_counters,
    three_phase,
)

APR01_0000 = 1711922400.0  # 2024-04-01 00:00 CEST


@dataclass
class Recorded:
    method: str
    uri: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.uri.split("?")[0]


class Recorder(Resource):
    """Answers each request with the next scripted ``(code, body, headers)``;
    ``"hang"`` never answers. Default: 204."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Recorded] = []
        self.script: list[Any] = []
        self.active = self.max_active = 0

    def render(self, request: Any) -> Any:
        headers = {k.decode().lower(): b",".join(v).decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append(Recorded(request.method.decode(), request.uri.decode(), headers,
                                      request.content.read()))
        action = self.script.pop(0) if self.script else (204, b"", {})
        if action == "hang":
            return NOT_DONE_YET
        if action[0] == "slow":  # ("slow", code): answer a moment later, tracking overlap
            self.active += 1
            self.max_active = max(self.max_active, self.active)

            def finish() -> None:
                self.active -= 1
                request.setResponseCode(action[1])
                request.finish()

            reactor.callLater(0.02, finish)
            return NOT_DONE_YET
        code, body, extra = action
        request.setResponseCode(code)
        for key, value in extra.items():
            request.setHeader(key, value)
        return body

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if "write" in r.path]

    def lines(self) -> list[str]:
        return [line for r in self.writes() for line in r.body.decode().splitlines()]


class _Silent(Protocol):
    """Reads a request and never answers (a hung database)."""

    def dataReceived(self, data: bytes) -> None:
        waiters, self.factory.waiters = self.factory.waiters, []
        for d in waiters:
            d.callback(None)


def silent_server(case: TestCase) -> tuple[Any, list[Deferred[None]]]:
    """A listening port that never answers; ``waiters`` fire when a request arrives."""
    factory = Factory.forProtocol(_Silent)
    factory.waiters = []
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return port, factory.waiters


@inlineCallbacks
def closed_port() -> Any:
    """A port on 127.0.0.1 nothing listens on (connections are refused)."""
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    number = port.getHost().port
    yield port.stopListening()
    return number


class ExporterCase(TestCase):
    timeout = 60

    def setUp(self):
        self.recorder = Recorder()
        site = Site(self.recorder, timeout=None)
        site.noisy = False
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.clock = Clock()
        self.clock.advance(MAR30_2200)
        self.meters = MeterSet()
        self.metrics = Metrics(lambda: self.meters.values())
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def exporter(self, store: Any = None, start: bool = True, **kw: Any) -> InfluxExporter:
        kw.setdefault("url", self.url)
        kw.setdefault("timezone", "Europe/Amsterdam")
        exporter = InfluxExporter(Options(**kw), self.meters, reactor, metrics=self.metrics, store=store,
                                  clock=self.clock, rng=random.Random(7))
        if start:
            exporter.startService()
            self.addCleanup(lambda: exporter.stopService() if exporter.running else None)
        return exporter

    def meter(self, name: str = "grid", counters: tuple[tuple[float, float], ...] | None = None) -> Meter:
        """A meter added to the set (with its lifetime counters already set)."""
        meter = Meter(name, self.clock, stale_after=1e9, source_type="test")
        if counters is not None:
            set_counters(meter, *counters)
        self.meters.add(meter)
        return meter

    def log_text(self) -> str:
        return "\n".join(formatEvent(e) or "" for e in self.events)


class WriteTests(ExporterCase):
    @inlineCallbacks
    def test_v2_exact_request(self):
        """The recorded-request test of the v2 API: path, query, headers and body bytes."""
        exporter = self.exporter(api="v2", org="home", bucket="meters", token=TOKEN, timezone="UTC")
        meter = self.meter(counters=((1.5, 0.0), (0.0, 0.0), (0.0, 2.0)))
        meter.update(Reading(phases=(PhaseReading(0.0, 0.0, 100.0, 0.0, 0.0, 0.0),), measured_at=1_700_000_000.0))
        yield exporter.flush()
        (req,) = self.recorder.requests
        self.assertEqual(req.method, "POST")
        self.assertEqual(req.uri, "/api/v2/write?org=home&bucket=meters&precision=ms")
        self.assertEqual(req.headers["authorization"], f"Token {TOKEN}")
        self.assertEqual(req.headers["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(req.body, (
            b"smart_meter,meter=grid,meter_type=test,phase=a power_w=100.0,import_wh=1.5,export_wh=0.0,"
            b"daily_import_kwh=0.0,daily_export_kwh=0.0 1700000000000\n"
            b"smart_meter,meter=grid,meter_type=test,phase=total power_w=100.0,import_wh=1.5,export_wh=2.0,"
            b"daily_import_kwh=0.0,daily_export_kwh=0.0 1700000000000\n"))
        self.assertEqual(exporter.high.points_written, 2)

    @inlineCallbacks
    def test_v2_token_from_username_for_influxdb_18(self):
        exporter = self.exporter(api="v2", username="me", password=PASSWORD, precision="s")
        self.meter().update(three_phase(1.0))
        yield exporter.flush()
        (req,) = self.recorder.requests
        self.assertEqual(req.uri, "/api/v2/write?bucket=meteremu&precision=s")
        self.assertEqual(req.headers["authorization"], f"Token me:{PASSWORD}")

    @inlineCallbacks
    def test_v1_creates_the_databases_and_uses_basic_auth(self):
        exporter = self.exporter(url=self.url + "/influx/", username="me", password=PASSWORD,
                                 retention_policy="autogen", low_rate_database="daily", precision="us")
        self.meter().update(three_phase(1.0))
        yield exporter.flush()
        create, write = self.recorder.requests
        self.assertEqual((create.method, create.path), ("POST", "/influx/query"))
        self.assertEqual(create.body, b"q=CREATE+DATABASE+%22meteremu%22")
        self.assertEqual(create.headers["content-type"], "application/x-www-form-urlencoded")
        self.assertEqual(write.uri, "/influx/write?db=meteremu&precision=u&rp=autogen")
        expected = "Basic " + base64.b64encode(f"me:{PASSWORD}".encode()).decode()
        self.assertEqual(write.headers["authorization"], expected)
        self.assertTrue(write.body.endswith(b" 1000000\n"))
        self.assertEqual(exporter.low.target.write_url, self.url + "/influx/write?db=daily&precision=u&rp=autogen")

    @inlineCallbacks
    def test_database_dropped_while_running_is_created_again(self):
        exporter = self.exporter()
        self.meter().update(three_phase(1.0))
        created = (200, b'{"results":[{"statement_id":0}]}', {})
        self.recorder.script = [created, (404, b'{"error":"database not found: \\"meteremu\\""}', {}),
                                created, (204, b"", {})]
        yield exporter.flush()
        self.assertEqual([r.path for r in self.recorder.requests], ["/query", "/write", "/query", "/write"])
        self.assertEqual(self.recorder.requests[1].body, self.recorder.requests[3].body)
        self.assertEqual(exporter.high.size, 0)

    @inlineCallbacks
    def test_missing_database_without_create_is_retried(self):
        exporter = self.exporter(create_database=False)
        self.meter().update(three_phase(1.0))
        self.recorder.script = [(404, b'{"error":"database not found: \\"meteremu\\""}', {})]
        yield exporter.flush()
        self.assertEqual([r.path for r in self.recorder.requests], ["/write"])
        self.assertEqual((exporter.high.size, exporter.high.dropped_rejected), (4, 0))
        self.assertIsNotNone(exporter.high.retry_at)

    @inlineCallbacks
    def test_batches_and_flush_interval(self):
        exporter = self.exporter(batch_size=8, flush_interval=10, create_database=False)
        meter = self.meter()
        meter.update(three_phase(1.0))  # 4 points: below a batch
        self.clock.advance(0)
        self.assertEqual(self.recorder.requests, [])
        meter.update(three_phase(2.0))  # 8 points: a full batch is written at once
        self.clock.advance(0)
        yield exporter.high.when_idle()
        self.assertEqual(len(self.recorder.writes()), 1)
        self.assertEqual(len(self.recorder.lines()), 8)
        meter.update(three_phase(3.0))
        self.clock.advance(9)
        self.assertEqual(exporter.high.size, 4)
        self.clock.advance(1)  # the flush timer
        yield exporter.high.when_idle()
        self.assertEqual(len(self.recorder.writes()), 2)
        self.assertEqual(exporter.high.size, 0)

    @inlineCallbacks
    def test_one_write_in_flight_however_many_flushes(self):
        exporter = self.exporter(create_database=False, batch_size=4)
        meter = self.meter()
        self.recorder.script = [("slow", 503)] + [("slow", 204)] * 5
        meter.update(three_phase(1.0))
        self.clock.advance(0)  # a full batch: the first write starts (and will fail)
        flushes = [exporter.flush(), exporter.flush()]
        meter.update(three_phase(2.0))
        flushes.append(exporter.high.flush())
        meter.update(three_phase(3.0))
        yield gatherResults(flushes)
        yield exporter.flush()
        self.assertEqual(self.recorder.max_active, 1)
        self.assertEqual((exporter.high.size, exporter.high.points_written), (0, 12))

    @inlineCallbacks
    def test_server_errors_are_retried_with_backoff(self):
        exporter = self.exporter(create_database=False)
        sink = exporter.high
        self.meter().update(three_phase(1.0))
        self.recorder.script = [(503, b"overloaded", {}), (500, b"oops", {}), (204, b"", {})]
        sink.kick()
        yield sink.when_idle()
        self.assertEqual((sink.size, sink.writes_failed, sink.failures_in_a_row), (4, 1, 1))
        first = sink.retry_at - self.clock.seconds()
        self.assertTrue(0.5 <= first <= 1.0, first)
        sink.kick()  # backing off: nothing happens
        self.assertEqual(len(self.recorder.requests), 1)
        self.clock.advance(first)
        yield sink.when_idle()
        self.assertEqual(len(self.recorder.requests), 2)
        second = sink.retry_at - self.clock.seconds()
        self.assertTrue(1.0 <= second <= 2.0, second)
        self.clock.advance(second)
        yield sink.when_idle()
        self.assertEqual((sink.size, sink.writes_ok, sink.writes_failed, sink.failures_in_a_row), (0, 1, 2, 0))
        self.assertEqual(self.recorder.requests[0].body, self.recorder.requests[2].body)
        self.assertEqual(sink.last_flush, self.clock.seconds())

    def test_backoff_grows_to_a_minute_and_honours_retry_after(self):
        sink = self.exporter(start=False).high
        ceilings = [1, 2, 4, 8, 16, 32, 60, 60]
        for failures, ceiling in enumerate(ceilings, start=1):
            delay = sink.backoff(failures)
            self.assertTrue(ceiling / 2 <= delay <= ceiling, (failures, delay))
        self.assertEqual(sink.backoff(1, retry_after=30), 30)
        self.assertEqual(sink.backoff(1, retry_after=10_000), 600)

    @inlineCallbacks
    def test_429_waits_for_retry_after(self):
        exporter = self.exporter(create_database=False)
        sink = exporter.high
        self.meter().update(three_phase(1.0))
        self.recorder.script = [(429, b"slow down", {"Retry-After": "30"})]
        yield exporter.flush()
        self.assertEqual(sink.retry_at - self.clock.seconds(), 30)
        self.clock.advance(29)
        self.assertEqual(len(self.recorder.requests), 1)
        self.clock.advance(1)
        yield sink.when_idle()
        self.assertEqual((len(self.recorder.requests), sink.size), (2, 0))

    @inlineCallbacks
    def test_other_4xx_drops_the_batch_and_logs(self):
        exporter = self.exporter(create_database=False, batch_size=4)
        sink = exporter.high
        meter = self.meter()
        meter.update(three_phase(1.0))
        meter.update(three_phase(2.0))
        self.recorder.script = [(400, b'{"error":"field type conflict"}', {}), (204, b"", {})]
        yield exporter.flush()
        self.assertEqual((sink.dropped_rejected, sink.writes_rejected, sink.writes_ok, sink.size), (4, 1, 1, 0))
        self.assertIn("field type conflict", self.log_text())
        self.assertIn("rejected 4 points", self.log_text())

    @inlineCallbacks
    def test_413_splits_the_batch(self):
        exporter = self.exporter(create_database=False, batch_size=8)
        sink = exporter.high
        meter = self.meter()
        meter.update(three_phase(1.0))
        meter.update(three_phase(2.0))
        self.recorder.script = [(413, b"too large", {}), (204, b"", {}), (413, b"", {}), (204, b"", {}),
                                (204, b"", {})]
        yield exporter.flush()
        sizes = [len(r.body.splitlines()) for r in self.recorder.requests]
        self.assertEqual(sizes, [8, 4, 4, 2, 2])
        self.assertEqual((sink.size, sink.points_written, sink.dropped_rejected), (0, 8, 0))
        # a single line that is still too large is dropped
        meter.update(Reading(phases=(), measured_at=3.0, extras={"gas": 1.0}))
        self.recorder.script = [(413, b"", {})]
        sink.max_batch = 1
        yield exporter.flush()
        self.assertEqual((sink.size, sink.dropped_rejected), (0, 1))

    @inlineCallbacks
    def test_full_buffer_drops_the_oldest_and_counts(self):
        exporter = self.exporter(create_database=False, batch_size=4, buffer_limit=10, flush_interval=1000)
        sink = exporter.high
        meter = self.meter()
        self.recorder.script = [(500, b"", {})]
        meter.update(three_phase(1.0))  # reaches batch_size: a write is scheduled
        self.clock.advance(0)
        yield sink.when_idle()  # … and fails: back-off
        for t in (2.0, 3.0, 4.0):
            meter.update(three_phase(t))
        self.assertEqual((sink.size, sink.dropped_full), (10, 6))
        yield exporter.flush()
        self.assertEqual(sink.size, 0)
        stamps = [line.rsplit(" ", 1)[1] for line in self.recorder.lines()[4:]]
        # the 4 points of t=1 and the 2 oldest of t=2 were dropped
        self.assertEqual(stamps, ["2000"] * 2 + ["3000"] * 4 + ["4000"] * 4)
        self.assertIn("buffer for database 'meteremu'", self.log_text())

    @inlineCallbacks
    def test_health_metrics(self):
        exporter = self.exporter(create_database=False)
        self.meter().update(three_phase(1.0))
        yield exporter.flush()
        text = self.metrics.render().decode()
        for expected in (
            'meteremu_influxdb_buffered_points{destination="high_rate"} 0.0',
            'meteremu_influxdb_dropped_points_total{destination="high_rate",reason="buffer_full"} 0.0',
            'meteremu_influxdb_writes_total{destination="high_rate",result="ok"} 1.0',
            'meteremu_influxdb_points_written_total{destination="high_rate"} 4.0',
            'meteremu_influxdb_last_flush_timestamp_seconds{destination="high_rate"} '
            + floatToGoString(MAR30_2200),
            'meteremu_influxdb_buffered_points{destination="low_rate"} 0.0',
        ):
            self.assertIn(expected, text)

    @inlineCallbacks
    def test_hung_database_times_out_and_keeps_points(self):
        silent, _ = silent_server(self)
        exporter = self.exporter(url=f"http://127.0.0.1:{silent.getHost().port}", timeout=0.3,
                                 create_database=False)
        meter = self.meter()
        started = time.monotonic()
        meter.update(three_phase(1.0))
        self.assertLess(time.monotonic() - started, 0.05)  # the update path does no I/O
        yield exporter.flush()
        self.assertEqual((exporter.high.size, exporter.high.writes_failed), (4, 1))
        self.assertIn("no answer within 0.3 s", exporter.high.last_error)

    @inlineCallbacks
    def test_unreachable_database(self):
        port = yield closed_port()
        exporter = self.exporter(url=f"http://127.0.0.1:{port}")
        self.meter().update(three_phase(1.0))
        yield exporter.flush()
        self.assertEqual(exporter.high.size, 4)
        self.assertIn("connection refused", exporter.high.last_error)

    @inlineCallbacks
    def test_stop_writes_what_is_buffered(self):
        exporter = self.exporter(create_database=False, start=False)
        exporter.startService()
        self.meter().update(three_phase(1.0))
        yield exporter.stopService()
        self.assertEqual(len(self.recorder.lines()), 4)
        self.assertEqual(exporter.high.size, 0)

    @inlineCallbacks
    def test_meters_come_and_go(self):
        exporter = self.exporter(create_database=False)
        grid = self.meter("grid")
        grid.update(three_phase(1.0))
        heat = self.meter("heat")
        heat.update(Reading(phases=(), measured_at=1.0, extras={"heat_kwh": 5.0}))
        self.meters.remove("grid")
        grid.update(three_phase(2.0))  # no longer followed
        yield exporter.flush()
        self.assertEqual(len(self.recorder.lines()), 5)
        self.assertIn(store_key("heat"), exporter.store.values)
        self.assertNotIn("grid", exporter.day_starts)

    @inlineCallbacks
    def test_secrets_never_logged(self):
        set_level("debug")
        self.addCleanup(set_level, "info")
        for api, auth in (("v1", {"username": "me", "password": PASSWORD}), ("v2", {"token": TOKEN})):
            exporter = self.exporter(api=api, **auth)
            self.meter(f"m{api}").update(three_phase(1.0))
            self.recorder.script = [(401, b'{"error":"authorization failed"}', {}), (400, b'{"error":"bad"}', {}),
                                    "hang"]
            if api == "v1":
                self.recorder.script.insert(0, (200, b"{}", {}))  # CREATE DATABASE
            yield exporter.flush()  # create (v1) + 401
            yield exporter.flush()  # 400
            exporter.http.timeout = 0.2
            self.meters[f"m{api}"].update(three_phase(2.0))
            yield exporter.flush()  # hangs: timeout
            yield exporter.stopService()
        port = yield closed_port()
        exporter = self.exporter(url=f"http://127.0.0.1:{port}", username="me", password=PASSWORD)
        self.meters["mv1"].update(three_phase(3.0))
        yield exporter.flush()
        text = self.log_text()
        self.assertIn("authorization failed", text)
        self.assertIn("no answer within", text)
        self.assertIn("connection refused", text)
        self.assertNotIn(PASSWORD, text)
        self.assertNotIn(TOKEN, text)
        self.assertNotIn(base64.b64encode(f"me:{PASSWORD}".encode()).decode(), text)
        for event in self.events:
            self.assertNotIn(PASSWORD, repr(event))
            self.assertNotIn(TOKEN, repr(event))

    def test_describe_and_safe_url(self):
        self.assertEqual(safe_url("https://[::1]:8086/x?db=a"), "https://[::1]:8086/x")
        self.assertEqual(describe(ValueError("boom"), 5), "ValueError: boom")


class DailyTests(ExporterCase):
    def daily(self) -> list[dict[str, Any]]:
        out = []
        for line in self.recorder.lines():
            if line.startswith("smart_meter_daily,"):
                head, fields, stamp = line.split(" ")
                tags = dict(kv.split("=") for kv in head.split(",")[1:])
                values = dict(kv.split("=") for kv in fields.split(","))
                out.append({**tags, **values, "time": int(stamp)})
        return out

    @inlineCallbacks
    def test_midnight_summaries_across_a_23_hour_day(self):
        exporter = self.exporter(create_database=False, low_rate_database="daily")
        meter = self.meter(counters=((1000.0, 0.0), (2000.0, 0.0), (3000.0, 100.0)))
        self.clock.advance(3600)  # 23:00
        set_counters(meter, (1100.0, 0.0), (2000.0, 0.0), (3000.0, 150.0))
        self.clock.advance(3600)  # midnight: the partial summary of Saturday (started at 22:00)
        set_counters(meter, (1500.0, 5.0), (2100.0, 0.0), (3000.0, 250.0))
        self.assertEqual(exporter.day_starts["grid"].day, date(2024, 3, 31))
        self.clock.advance(APR01_0000 - MAR31_0000 - 1)
        self.assertEqual(exporter.day_starts["grid"].day, date(2024, 3, 31))  # not yet: 23 h, not 24
        self.clock.advance(1)
        self.assertEqual(exporter.day_starts["grid"].day, date(2024, 4, 1))
        yield exporter.flush()
        rows = self.daily()
        self.assertEqual({r["time"] for r in rows[:4]}, {int(MAR30_2200 - 22 * 3600) * 1000})
        saturday, sunday = rows[:4], rows[4:]
        self.assertEqual([(r["phase"], r["import_wh"], r["export_wh"], r["complete"]) for r in saturday], [
            ("a", "100.0", "0.0", "false"), ("b", "0.0", "0.0", "false"), ("c", "0.0", "50.0", "false"),
            ("total", "100.0", "50.0", "false")])
        self.assertEqual({r["time"] for r in sunday}, {int(MAR31_0000) * 1000})
        self.assertEqual([(r["phase"], r["import_wh"], r["export_wh"], r["net_wh"], r["complete"]) for r in sunday], [
            ("a", "400.0", "5.0", "395.0", "true"), ("b", "100.0", "0.0", "100.0", "true"),
            ("c", "0.0", "100.0", "-100.0", "true"), ("total", "500.0", "105.0", "395.0", "true")])
        self.assertTrue(all("/write?db=daily&" in r.uri for r in self.recorder.writes()))

    @inlineCallbacks
    def test_restart_mid_day_keeps_the_day_start(self):
        path = self.mktemp() + ".db"
        self.clock.advance(MAR31_0000 + 8 * 3600 - self.clock.seconds())  # Sunday 08:00
        store = Store(path, 30, clock=reactor)
        store.startService()
        exporter = self.exporter(store=store, create_database=False, start=False)
        self.meter(counters=((100.0, 5.0), (200.0, 0.0), (0.0, 0.0)))
        exporter.startService()
        yield exporter.stopService()
        yield store.stopService()

        # The process restarts at 14:00 with the counters it saved.
        self.clock.advance(6 * 3600)
        self.meters.remove("grid")
        store = Store(path, 30, clock=reactor)
        meter = self.meter(counters=((130.0, 6.0), (200.0, 0.0), (0.0, 0.0)))
        exporter = self.exporter(store=store, create_database=False)
        self.assertEqual(exporter.day_starts["grid"].counters, ((100.0, 5.0), (200.0, 0.0), (0.0, 0.0)))
        meter.update(three_phase(self.clock.seconds()))
        yield exporter.flush()
        (a,) = [line for line in self.recorder.lines() if ",phase=a " in line]
        self.assertIn("daily_import_kwh=0.03,daily_export_kwh=0.001", a)
        set_counters(meter, (180.0, 9.0), (200.0, 0.0), (0.0, 0.0))
        self.clock.advance(APR01_0000 - self.clock.seconds())
        yield exporter.flush()
        rows = self.daily()
        self.assertEqual([(r["phase"], r["import_wh"], r["export_wh"], r["complete"]) for r in rows][0],
                         ("a", "80.0", "4.0", "false"))

    @inlineCallbacks
    def test_restart_on_a_later_day_writes_the_stored_day(self):
        store = Store(self.mktemp() + ".db", 30, clock=reactor)
        start = DayStart(date(2024, 3, 29), 1711666800.0, ((100.0, 5.0), (0.0, 0.0), (0.0, 0.0)), True)
        store.put(store_key("grid"), start.to_dict())
        meter = self.meter()
        set_counters(meter, (130.0, 7.0), (0.0, 0.0), (0.0, 0.0))
        exporter = self.exporter(store=store, create_database=False)
        self.assertEqual(exporter.day_starts["grid"].day, date(2024, 3, 30))
        self.assertEqual(store.get(store_key("grid"))["counters"][0], [130.0, 7.0])
        self.clock.advance(0)
        yield exporter.flush()
        rows = self.daily()
        self.assertEqual((rows[0]["time"], rows[0]["import_wh"], rows[0]["export_wh"], rows[0]["complete"]),
                         (int(start.at) * 1000, "30.0", "2.0", "false"))

    def test_wall_clock_checks_are_frequent(self):
        exporter = self.exporter(create_database=False)
        self.meter()
        self.assertLessEqual(exporter.days.next_wake - self.clock.seconds(), 600)
        # A wall-clock step past midnight (NTP) is noticed at the next wake.
        self.clock.rightNow = APR01_0000 + 5 * 3600
        self.clock.advance(600)
        self.assertEqual(exporter.day_starts["grid"].day, date(2024, 4, 1))


class InfluxDB16Tests(ExporterCase):
    """Debian's influxd 1.6 (v1 API): what was written is queried back."""

    @inlineCallbacks
    def test_points_and_daily_summary_round_trip(self):
        server = yield start_influxd(self)
        exporter = self.exporter(url=server.url, low_rate_database="meteremu_daily")
        meter = self.meter('Living room, "east"=1', counters=((1000.0, 10.0), (2000.0, 20.0), (3000.0, 30.0)))
        meter.extra_labels = {"inverter.1219": {"array": "south face", "row": "2"},
                              "circuit.Heat pump": {"floor": "ground"}}
        meter.update(three_phase(1_700_000_000.5, extras={"inverter.1219": 287.0, "circuit.Heat pump": 470.0,
                                                          "pv_power": 1.0}))
        self.clock.advance(MAR31_0000 - self.clock.seconds())  # local midnight: a daily summary
        yield exporter.flush()
        self.assertEqual((exporter.high.size, exporter.low.size), (0, 0))
        self.assertEqual((exporter.high.writes_rejected, exporter.low.writes_rejected), (0, 0))

        rows = yield server.rows("SELECT * FROM smart_meter GROUP BY *", "meteremu")
        self.assertEqual(len(rows), 4)
        by_phase = {r["phase"]: r for r in rows}
        a = by_phase["a"]
        self.assertEqual((a["time"], a["meter"], a["meter_type"]), (1_700_000_000_500, 'Living room, "east"=1', "test"))
        self.assertEqual((a["power_w"], a["import_wh"], a["export_wh"], a["V_rms"]), (1200.0, 1000.0, 10.0, 230.0))
        self.assertAlmostEqual(a["S"], 1200.0 / 0.9)
        self.assertAlmostEqual(by_phase["total"]["power_w"], 944.75)
        self.assertNotIn("S", {k for k, v in by_phase["total"].items() if v is not None})

        (inverter,) = yield server.rows("SELECT * FROM inverter GROUP BY *", "meteremu")
        self.assertEqual((inverter["serial"], inverter["array"], inverter["row"], inverter["power_w"]),
                         ("1219", "south face", "2", 287.0))
        (circuit,) = yield server.rows("SELECT * FROM smart_meter_circuit GROUP BY *", "meteremu")
        self.assertEqual((circuit["circuit_name"], circuit["floor"], circuit["power_w"]), ("Heat pump", "ground", 470.0))
        self.assertAlmostEqual(circuit["percentage"], 470.0 / 944.75 * 100)
        (value,) = yield server.rows("SELECT * FROM smart_meter_value GROUP BY *", "meteremu")
        self.assertEqual((value["name"], value["value"]), ("pv_power", 1.0))

        daily = yield server.rows("SELECT * FROM smart_meter_daily GROUP BY *", "meteremu_daily")
        self.assertEqual(len(daily), 4)
        self.assertEqual({r["interval"] for r in daily}, {"1d"})
        self.assertEqual({r["time"] for r in daily}, {int(MAR31_0000 - 86400) * 1000})
        self.assertTrue(all(r["complete"] is False and r["import_wh"] == 0.0 for r in daily))
        # the high-rate database does not get the daily summary
        none = yield server.rows("SELECT * FROM smart_meter_daily", "meteremu")
        self.assertEqual(none, [])

    @inlineCallbacks
    def test_escaping_round_trip(self):
        server = yield start_influxd(self)
        exporter = self.exporter(url=server.url, timezone="UTC")
        meter = self.meter("m")
        tricky = ['a b', 'a,b', 'a=b', 'q"uote', "back\\slash", "trail\\", "new\nline", "ü€"]
        for i, name in enumerate(tricky):
            meter.extra_labels[f"circuit.{name}"] = {"note": name}
            meter.update(Reading(phases=(), measured_at=1000.0 + i, extras={f"circuit.{name}": float(i)}))
        yield exporter.flush()
        self.assertEqual(exporter.high.writes_rejected, 0)
        rows = yield server.rows("SELECT * FROM smart_meter_circuit GROUP BY *", "meteremu")
        got = {r["circuit_name"]: (r["note"], r["power_w"]) for r in rows}
        expected = {name.replace("\n", " ").replace("trail\\", "trail/"): i for i, name in enumerate(tricky)}
        self.assertEqual(got, {k: (k, float(v)) for k, v in expected.items()})

    @inlineCallbacks
    def test_auth_and_wrong_password(self):
        server = yield start_influxd(self, auth=True)
        code, _ = yield server.post("/query", {"q": f"CREATE USER admin WITH PASSWORD '{PASSWORD}' WITH ALL PRIVILEGES"})
        self.assertEqual(code, 200)
        wrong = self.exporter(url=server.url, username="admin", password="nope-" + PASSWORD[::-1])
        self.meter().update(three_phase(1.0))
        yield wrong.flush()
        self.assertEqual(wrong.high.size, 4)  # 401: kept for a retry
        self.assertIn("HTTP 401", wrong.high.last_error)
        yield wrong.stopService()
        self.meters.remove("grid")
        right = self.exporter(url=server.url, username="admin", password=PASSWORD)
        self.meter().update(three_phase(2.0))
        yield right.flush()
        self.assertEqual((right.high.size, right.high.points_written), (0, 4))
        rows = yield server.rows("SELECT count(power_w) FROM smart_meter", "meteremu",
                                 headers={b"Authorization": [b"Basic " + base64.b64encode(f"admin:{PASSWORD}".encode())]})
        self.assertEqual(rows[0]["count"], 4)
        self.assertNotIn(PASSWORD, self.log_text())

    @inlineCallbacks
    def test_through_the_app(self):
        """The registry wiring: config → make_exporter → a running simulator's points."""
        server = yield start_influxd(self)
        config = test_config(self.mktemp(),
                             meters={"grid": {"source": {"type": "simulator", "interval": "1h", "start_time": "12:00"}}},
                             exporters={"influxdb": {"url": server.url, "database": "app", "flush_interval": "1h"}})
        app = yield start_app(self, config)
        exporter = app.exporters["influxdb"]
        self.assertIsInstance(exporter, InfluxExporter)
        self.assertIs(exporter.days, app.days)  # one owner of the day starts (the dashboard's too)
        yield exporter.flush()
        rows = yield server.rows("SELECT * FROM smart_meter GROUP BY *", "app")
        self.assertEqual({r["phase"] for r in rows}, {"a", "b", "c", "total"})
        self.assertEqual({r["meter_type"] for r in rows}, {"simulator"})
        values = yield server.rows("SELECT * FROM smart_meter_value GROUP BY *", "app")
        self.assertEqual({r["name"] for r in values}, {"pv_power", "load_power"})
        text = app.metrics.render().decode()
        self.assertIn('meteremu_influxdb_points_written_total{destination="high_rate"}', text)


class VictoriaMetricsV2Tests(ExporterCase):
    """The v2 write API against a server that speaks it (VictoriaMetrics)."""

    @inlineCallbacks
    def test_v2_write(self):
        server = yield start_victoria_metrics(self)
        exporter = self.exporter(url=server.url, api="v2", org="home", bucket="meters", token=TOKEN,
                                 timezone="UTC")
        meter = self.meter("grid")
        meter.extra_labels = {"inverter.1219": {"array": "east"}}
        set_counters(meter, (1000.0, 10.0), (2000.0, 20.0), (3000.0, 30.0))
        now = float(int(time.time()))
        meter.update(three_phase(now, extras={"inverter.1219": 287.0}))
        yield exporter.flush()
        self.assertEqual(exporter.high.writes_ok, 1)
        series = yield server.export('{__name__=~"smart_meter_.*|inverter_.*"}', expect=4 * 5 + 3 * 5 + 1)
        power = series["smart_meter_power_w"]
        phase_a = frozenset({("meter", "grid"), ("meter_type", "test"), ("phase", "a")})
        self.assertEqual(power[phase_a], [(int(now) * 1000, 1200.0)])
        total = frozenset({("meter", "grid"), ("meter_type", "test"), ("phase", "total")})
        self.assertEqual(series["smart_meter_import_wh"][total], [(int(now) * 1000, 6000.0)])
        self.assertEqual(series["inverter_power_w"][frozenset({("meter", "grid"), ("serial", "1219"),
                                                                ("array", "east")})],
                         [(int(now) * 1000, 287.0)])


class TransportIsolationTests(TestCase):
    timeout = 60
    skip = asyncio_reactor_skip()

    @inlineCallbacks
    def test_udp_replies_while_the_database_hangs(self):
        from tests.support.udp import Battery, free_udp_ports

        silent, waiters = silent_server(self)
        request_arrived: Deferred[None] = Deferred()
        waiters.append(request_arrived)
        (udp_port,) = free_udp_ports(1)
        config = test_config(
            self.mktemp(),
            meters={"grid": {"source": {"type": "simulator", "interval": "1h", "start_time": "12:00"}}},
            devices=[{"type": "shelly_pro_3em", "udp_ports": [udp_port]}],
            exporters={"influxdb": {"url": f"http://127.0.0.1:{silent.getHost().port}", "create_database": False,
                                    "flush_interval": "50ms", "timeout": "2s"}})
        app = yield start_app(self, config)
        sink = app.exporters["influxdb"].high
        yield request_arrived.addTimeout(5, reactor)
        self.assertTrue(sink.inflight, "a write should be hanging on the dead database")
        proto = Battery()
        port = reactor.listenUDP(0, proto, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        for i in range(5):
            started = time.monotonic()
            raw = yield proto.ask(b'{"id":%d,"method":"EM.GetStatus","params":{"id":0}}' % i, udp_port, timeout=1.0)
            self.assertLess(time.monotonic() - started, 0.5)
            self.assertIn(b'"total_act_power"', raw)
        self.assertTrue(sink.inflight)
