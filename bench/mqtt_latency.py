"""Latency from an MQTT publish to the new value being served.

One process, one asyncio reactor, loopback only: a real mosquitto (Debian's,
started on a free 127.0.0.1 port with the test suite's fixture), a real
meteremu (an ``mqtt`` meter and a Shelly Pro 3EM with a UDP port and HTTP),
and a publisher (``meteremu.mqttclient.ReactorMQTTClient`` on the same
reactor, so no thread hand-off is measured). For each of ``--changes``
values the clock starts just before the publish; a UDP client
(``EM.GetStatus`` datagrams) and an HTTP client (``GET
/rpc/EM.GetStatus?id=0``, persistent connection) each ask again as soon as an
answer still shows the old value, and stop the clock when they see the new
one. The time until the Meter took the reading (a listener) is recorded too,
and the plain request round trips without a change are the baseline:
*added* latency ≈ seen − baseline. Every figure includes the broker hop
(publisher → mosquitto → meteremu), which any MQTT input pays.

Unlike AstraMeter's default ``WAIT_FOR_NEXT_MESSAGE`` (a reply waits up to
2 s for the next publish), meteremu answers at once with the latest value:
there is no setting that trades latency for "fresher" samples.

Usage::

    python bench/mqtt_latency.py [--changes 500] [result.json]

Prints p50/p99 per path and writes the JSON to the path given, if any.
Bounded: the run is aborted after ``--budget`` seconds (default 60).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.protocol import DatagramProtocol  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import treq  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402

import meteremu.sources  # noqa: E402
from bench.push_latency import UDPAsker, deferLater, summary  # noqa: E402
from meteremu.app import build  # noqa: E402
from meteremu.config import parse_config  # noqa: E402
from meteremu.logs import set_level  # noqa: E402
from meteremu.mqttclient import BrokerSettings, Message, ReactorMQTTClient  # noqa: E402
from tests.support.mosquitto import MOSQUITTO, Mosquitto  # noqa: E402

TOPIC = "bench/grid/power"


class _Fixture:
    """What ``tests.support.mosquitto.Mosquitto`` needs of a TestCase."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.cleanups: list[Callable[[], Any]] = []

    def mktemp(self) -> str:
        return os.path.join(self.directory, "broker")

    def addCleanup(self, function: Callable[[], Any]) -> None:
        self.cleanups.append(function)


def until(condition: Callable[[], bool], timeout: float = 10.0) -> defer.Deferred[None]:
    """Polls ``condition`` every 5 ms; fails after ``timeout`` seconds."""

    @defer.inlineCallbacks
    def wait() -> Any:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            yield deferLater(0.005)

    return wait()


@defer.inlineCallbacks
def run(args: argparse.Namespace, fixture: _Fixture) -> Any:
    set_level("warn")
    if "mqtt" not in meteremu.sources.SOURCE_MODULES:  # until the registry lists it
        meteremu.sources.SOURCE_MODULES["mqtt"] = "meteremu.sources.mqtt"
    tmp = fixture.directory
    broker = Mosquitto(fixture)
    publisher: ReactorMQTTClient | None = None
    app = pool = client_port = None
    try:
        yield broker.start()
        probe = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        udp_port = probe.getHost().port
        yield probe.stopListening()
        config = parse_config({
            "server": {"host": "127.0.0.1", "http_port": 0},
            "store": {"path": os.path.join(tmp, "state.db"), "persist_interval": "1h"},
            "logging": {"level": "warn"},
            "meters": {"grid": {"source": {"type": "mqtt", "host": "127.0.0.1", "port": broker.port,
                                           "values": {"power": TOPIC}}}},
            "devices": [{"type": "shelly_pro_3em", "udp_ports": [udp_port]}],
        }, "(bench)", env={})
        app = build(config, reactor)
        app.service.startService()
        publisher = ReactorMQTTClient(BrokerSettings("127.0.0.1", broker.port, "bench-publisher"), reactor,
                                      name="bench publisher")
        publisher.start()
        yield until(lambda: publisher.connected)
        pool = HTTPConnectionPool(reactor, persistent=True)
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        asker = UDPAsker(udp_port)
        client_port = reactor.listenUDP(0, asker, interface="127.0.0.1")
        url = f"http://127.0.0.1:{app.http_port()}/rpc/EM.GetStatus?id=0"
        meter = app.meters["grid"]
        arrived: dict[str, float] = {}
        meter.add_listener(lambda m, r: arrived.__setitem__("t", time.perf_counter()))
        publisher.publish(Message(TOPIC, "0", 0, True))  # retained: there whenever the source subscribes
        yield until(lambda: meter.latest is not None)

        @defer.inlineCallbacks
        def http_until(want: float, t0: float) -> Any:
            while True:
                response = yield http.get(url)
                body = yield response.content()
                if json.loads(body)["a_act_power"] == want:
                    return time.perf_counter() - t0

        base_udp, base_http = [], []
        for _ in range(200):  # baseline round trips: the value is already there
            t0 = time.perf_counter()
            base_udp.append((yield asker.ask_until(0.0, t0)))
            t0 = time.perf_counter()
            base_http.append((yield http_until(0.0, t0)))
        udp, via_http, to_meter = [], [], []
        warmup = 20
        for i in range(args.changes + warmup):
            want = float(1000 + i) if i % 2 else float(-500 - i)
            arrived.pop("t", None)
            t0 = time.perf_counter()
            publisher.publish(Message(TOPIC, f"{want:g}"))
            a, b = yield defer.gatherResults([asker.ask_until(want, t0), http_until(want, t0)])
            if i >= warmup:
                udp.append(a)
                via_http.append(b)
                to_meter.append(arrived["t"] - t0)
        result = {
            "benchmark": "mqtt_latency", "changes": args.changes,
            "goal": "p99 under 5 ms from the MQTT publish (through mosquitto) to the value served",
            "meter_update": summary(to_meter), "udp": summary(udp), "http": summary(via_http),
            "baseline_udp_rtt": summary(base_udp), "baseline_http_rtt": summary(base_http),
            "broker": MOSQUITTO, "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "cpus": os.cpu_count(),
        }
        result["udp_p99_under_5ms"] = result["udp"]["p99_ms"] < 5.0
        result["http_p99_under_5ms"] = result["http"]["p99_ms"] < 5.0
        return result
    finally:
        if client_port is not None:
            yield client_port.stopListening()
        if pool is not None:
            yield pool.closeCachedConnections()
        if publisher is not None:
            yield publisher.stop()
        if app is not None:
            yield app.service.stopService()
        yield broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", help="write the JSON result here")
    parser.add_argument("--changes", type=int, default=500)
    parser.add_argument("--budget", type=float, default=60.0, help="abort after this many seconds")
    args = parser.parse_args()
    if MOSQUITTO is None:
        sys.stderr.write("mosquitto is not installed (Debian: apt-get install mosquitto)\n")
        return 1
    outcome: dict[str, Any] = {}

    def finished(result: Any) -> None:
        outcome["result"] = result
        if reactor.running:
            reactor.stop()

    def failed(failure: Any) -> None:
        outcome["error"] = failure.getTraceback()
        if reactor.running:
            reactor.stop()

    fixture = _Fixture(tempfile.mkdtemp(prefix="mqtt_latency_"))
    d = run(args, fixture)
    d.addTimeout(args.budget, reactor)
    d.addCallbacks(finished, failed)
    try:
        if not d.called:
            reactor.run()
    finally:  # also after an aborted run: the broker never outlives the benchmark
        for cleanup in fixture.cleanups:
            cleanup()
        shutil.rmtree(fixture.directory, ignore_errors=True)
    if "error" in outcome:
        sys.stderr.write(outcome["error"])
        return 1
    result = outcome["result"]
    for path in ("meter_update", "udp", "http", "baseline_udp_rtt", "baseline_http_rtt"):
        s = result[path]
        print(f"{path:18s} p50 {s['p50_ms']:7.3f} ms  p99 {s['p99_ms']:7.3f} ms  max {s['max_ms']:7.3f} ms")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
