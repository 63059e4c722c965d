"""Latency from a Home Assistant state change to the new value being served.

One process, one asyncio reactor, loopback only: the fake Home Assistant of
the tests (``tests/support/fake_homeassistant.py``) pushes ``subscribe_entities``
diffs to a real meteremu (a ``homeassistant`` meter and a Shelly Pro 3EM with
a UDP port and HTTP). For each of ``--changes`` state changes the clock starts
just before the fake server sends the event; a UDP client (``EM.GetStatus``
datagrams) and an HTTP client (``GET /rpc/EM.GetStatus?id=0``, persistent
connection) each ask again as soon as an answer still shows the old value,
and stop the clock when they see the new one. The time until the Meter took
the reading (a listener) is recorded too, and the plain request round trips
without a change are the baseline: *added* latency ≈ seen − baseline.

The fake server does not coalesce frames here (that would add a reactor turn
of the fake, not of meteremu). Everything shares one reactor, so the figures
include the clients' own share of it: an upper bound for meteremu.

Usage::

    python bench/ha_latency.py [--changes 500] [result.json]

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
from typing import Any

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.protocol import DatagramProtocol  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import treq  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402

from bench.push_latency import UDPAsker, deferLater, summary  # noqa: E402
from meteremu.app import build  # noqa: E402
from meteremu.config import parse_config  # noqa: E402
from meteremu.logs import set_level  # noqa: E402
from tests.support.fake_homeassistant import HOMEWIZARD_POWER, FakeHomeAssistant  # noqa: E402

ENTITY = "sensor.p1_meter_power"


@defer.inlineCallbacks
def run(args: argparse.Namespace) -> Any:
    set_level("warn")
    fake = FakeHomeAssistant()
    fake.allow_coalescing = False
    fake.listen()
    fake.set_state(ENTITY, "0", HOMEWIZARD_POWER)
    probe = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
    udp_port = probe.getHost().port
    yield probe.stopListening()
    tmp = tempfile.mkdtemp(prefix="ha_latency_")
    config = parse_config({
        "server": {"host": "127.0.0.1", "http_port": 0},
        "store": {"path": os.path.join(tmp, "state.db"), "persist_interval": "1h"},
        "logging": {"level": "warn"},
        "meters": {"grid": {"source": {"type": "homeassistant", "url": fake.url, "token": fake.token,
                                       "entities": {"power": ENTITY}}}},
        "devices": [{"type": "shelly_pro_3em", "udp_ports": [udp_port]}],
    }, "(bench)", env={})
    app = build(config, reactor)
    app.service.startService()
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = treq.client.HTTPClient(Agent(reactor, pool=pool))
    asker = UDPAsker(udp_port)
    client_port = reactor.listenUDP(0, asker, interface="127.0.0.1")
    url = f"http://127.0.0.1:{app.http_port()}/rpc/EM.GetStatus?id=0"
    meter = app.meters["grid"]
    arrived: dict[str, float] = {}
    meter.add_listener(lambda m, r: arrived.__setitem__("t", time.perf_counter()))
    try:
        yield fake.wait_type("subscribe_entities")
        while meter.latest is None:
            yield deferLater(0.01)

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
            fake.set_state(ENTITY, f"{want:g}")
            a, b = yield defer.gatherResults([asker.ask_until(want, t0), http_until(want, t0)])
            if i >= warmup:
                udp.append(a)
                via_http.append(b)
                to_meter.append(arrived["t"] - t0)
        result = {
            "benchmark": "ha_latency", "changes": args.changes,
            "goal": "p99 under 5 ms from the Home Assistant event to the value served",
            "meter_update": summary(to_meter), "udp": summary(udp), "http": summary(via_http),
            "baseline_udp_rtt": summary(base_udp), "baseline_http_rtt": summary(base_http),
            "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "cpus": os.cpu_count(),
        }
        result["udp_p99_under_5ms"] = result["udp"]["p99_ms"] < 5.0
        result["http_p99_under_5ms"] = result["http"]["p99_ms"] < 5.0
        return result
    finally:
        yield client_port.stopListening()
        yield pool.closeCachedConnections()
        yield app.service.stopService()
        yield fake.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", help="write the JSON result here")
    parser.add_argument("--changes", type=int, default=500)
    parser.add_argument("--budget", type=float, default=60.0, help="abort after this many seconds")
    args = parser.parse_args()
    outcome: dict[str, Any] = {}

    def finished(result: Any) -> None:
        outcome["result"] = result
        if reactor.running:
            reactor.stop()

    def failed(failure: Any) -> None:
        outcome["error"] = failure.getTraceback()
        if reactor.running:
            reactor.stop()

    d = run(args)
    d.addTimeout(args.budget, reactor)
    reactor.callWhenRunning(lambda: None)
    d.addCallbacks(finished, failed)
    if not d.called:
        reactor.run()
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
