"""Real time-series servers for the InfluxDB exporter tests.

``start_influxd`` runs Debian's ``influxd`` (1.6, ``apt-get install influxdb``)
and ``start_victoria_metrics`` runs ``victoria-metrics`` (``apt-get install
victoria-metrics``; it speaks the InfluxDB v2 write API). Each gets a temporary
data directory and free ports on 127.0.0.1 only, nothing else listens,
reporting is off, and the process is stopped at test cleanup. Start-up waits
on ``/ping`` (``/health``) with a bounded number of retries; a test is skipped
when the binary is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

START_ATTEMPTS = 150  # × 0.1 s
STOP_TIMEOUT = 15.0


def free_tcp_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free on 127.0.0.1 a moment ago."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


INFLUXD_CONFIG = """\
reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = {auth}
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false

[ifql]
  enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false
"""


class _Process(ProcessProtocol):
    def __init__(self, log_path: str) -> None:
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in processEnded
        self.exited = False
        self._waiters: list[Deferred[None]] = []

    def wait(self, timeout: float) -> Deferred[None]:
        """Fires when the process has ended; fails after ``timeout`` seconds."""
        d: Deferred[None] = Deferred()
        if self.exited:
            d.callback(None)
            return d
        self._waiters.append(d)
        return d.addTimeout(timeout, reactor)

    def outReceived(self, data: bytes) -> None:
        self.log.write(data)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        self.log.close()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)


@dataclass
class Server:
    """A running server: its base URL and an HTTP client to query it."""

    name: str
    url: str
    root: str
    process: Any
    proto: _Process
    client: Any
    pool: HTTPConnectionPool
    extra: dict[str, Any] = field(default_factory=dict)

    def log_text(self) -> str:
        with open(os.path.join(self.root, "server.log"), encoding="utf-8", errors="replace") as handle:
            return handle.read()[-4000:]

    @inlineCallbacks
    def get_json(self, path: str, params: dict[str, str] | None = None, **kw: Any) -> Any:
        url = self.url + path + ("?" + urlencode(params) if params else "")
        d = self.client.get(url, **kw)
        d.addCallback(lambda r: r.content().addCallback(lambda body: (r.code, body)))
        d.addTimeout(10, reactor)
        code, body = yield d
        if code >= 300:
            raise AssertionError(f"{self.name} {path} answered {code}: {body[:300]!r}")
        return json.loads(body)

    @inlineCallbacks
    def post(self, path: str, data: bytes | dict[str, str], **kw: Any) -> Any:
        d = self.client.post(self.url + path, data=data, **kw)
        d.addCallback(lambda r: r.content().addCallback(lambda body: (r.code, body)))
        d.addTimeout(10, reactor)
        return (yield d)

    # -- InfluxDB 1.x --
    def query(self, q: str, db: str | None = None, **kw: Any) -> Deferred[Any]:
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        return self.get_json("/query", params, **kw)

    @inlineCallbacks
    def rows(self, q: str, db: str, **kw: Any) -> Any:
        """``[{column: value}, …]`` over every series, each row with its series' tags."""
        answer = yield self.query(q, db, **kw)
        out = []
        for result in answer.get("results", []):
            if "error" in result:
                raise AssertionError(f"query {q!r} failed: {result['error']}")
            for series in result.get("series", []):
                for values in series["values"]:
                    row = dict(zip(series["columns"], values, strict=True))
                    row.update(series.get("tags", {}))
                    row["_measurement"] = series["name"]
                    out.append(row)
        return out

    # -- VictoriaMetrics --
    @inlineCallbacks
    def export(self, match: str, expect: int = 1) -> Any:
        """Series matching ``match`` as ``{name: {frozenset(labels): [(ms, value)]}}``.

        VictoriaMetrics makes samples searchable shortly after ingestion, so
        this flushes and retries (bounded) until ``expect`` series are there.
        """
        series: dict[str, dict[frozenset[tuple[str, str]], list[tuple[int, float]]]] = {}
        for _ in range(50):
            yield self.post("/internal/force_flush", b"")
            code, body = yield self.post("/api/v1/export", {"match[]": match})
            series = {}
            for line in body.decode().splitlines():
                item = json.loads(line)
                labels = dict(item["metric"])
                name = labels.pop("__name__")
                series.setdefault(name, {})[frozenset(labels.items())] = list(
                    zip(item["timestamps"], item["values"], strict=True))
            if sum(len(v) for v in series.values()) >= expect:
                return series
            yield deferLater(reactor, 0.1, lambda: None)
        return series


@inlineCallbacks
def _start(case: TestCase, name: str, binary: str, args: list[str], root: str, port: int,
           health: str) -> Any:
    proto = _Process(os.path.join(root, "server.log"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": root}
    process = reactor.spawnProcess(proto, binary, [binary, *args], env=env, path=root)
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = treq.client.HTTPClient(Agent(reactor, pool=pool, connectTimeout=2))
    server = Server(name, f"http://127.0.0.1:{port}", root, process, proto, client, pool)

    @inlineCallbacks
    def stop() -> Any:
        yield pool.closeCachedConnections()
        if proto.exited:
            return
        try:
            process.signalProcess("TERM")
        except ProcessExitedAlready:
            return
        try:
            yield proto.wait(STOP_TIMEOUT)
        except Exception:
            if not proto.exited:
                process.signalProcess("KILL")
                yield proto.wait(STOP_TIMEOUT)

    case.addCleanup(stop)
    for _ in range(START_ATTEMPTS):
        if proto.exited:
            break
        try:
            d = client.get(server.url + health)
            d.addCallback(lambda r: r.content().addCallback(lambda _: r.code))
            d.addTimeout(2, reactor)
            code = yield d
            if code in (200, 204):
                return server
        except Exception:
            pass
        yield deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"{name} did not start; its log ends with:\n{server.log_text()}")


def start_influxd(case: TestCase, auth: bool = False) -> Deferred[Server]:
    """influxd 1.x on 127.0.0.1:<free port> with its data under a temp dir."""
    binary = shutil.which("influxd")
    if binary is None:
        raise SkipTest("influxd is not installed (apt-get install influxdb)")
    root = os.path.abspath(case.mktemp())
    os.makedirs(root)
    http_port, rpc_port = free_tcp_ports(2)
    config = os.path.join(root, "influxdb.conf")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(INFLUXD_CONFIG.format(root=root, http_port=http_port, rpc_port=rpc_port,
                                           auth="true" if auth else "false"))
    return _start(case, "influxd", binary, ["run", "-config", config], root, http_port, "/ping")


def start_victoria_metrics(case: TestCase) -> Deferred[Server]:
    """VictoriaMetrics (InfluxDB v1/v2 write API) on 127.0.0.1:<free port>."""
    binary = shutil.which("victoria-metrics")
    if binary is None:
        raise SkipTest("victoria-metrics is not installed (apt-get install victoria-metrics)")
    root = os.path.abspath(case.mktemp())
    os.makedirs(root)
    (port,) = free_tcp_ports(1)
    args = [f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={root}/data", "-retentionPeriod=100y",
            "-search.latencyOffset=0s", "-loggerLevel=ERROR", "-selfScrapeInterval=0"]
    return _start(case, "victoria-metrics", binary, args, root, port, "/health")
