"""Shared by the push-source freshness benchmarks (ha, mqtt, tasmota and shelly latency).

Import after the asyncio reactor is installed (the scripts do that first).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol

REQUEST = b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}'


class UDPAsker(DatagramProtocol):
    """Sends EM.GetStatus until the answer shows ``want``; fires with the elapsed time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.want: float | None = None
        self.t0 = 0.0
        self.done: defer.Deferred[float] | None = None

    def ask_until(self, want: float, t0: float) -> defer.Deferred[float]:
        self.want, self.t0 = want, t0
        self.done = defer.Deferred()
        self.transport.write(REQUEST, ("127.0.0.1", self.port))
        return self.done

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        now = time.perf_counter()
        if self.done is None:
            return
        value = json.loads(data)["result"]["a_act_power"]
        if value == self.want:
            done, self.done = self.done, None
            done.callback(now - self.t0)
        else:
            self.transport.write(REQUEST, ("127.0.0.1", self.port))


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p / 100 * len(ms)))], 3)

    return {"n": len(ms), "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
            "max_ms": round(ms[-1], 3), "mean_ms": round(statistics.fmean(ms), 3)}


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


# -- the measurement every push benchmark shares -----------------------------------------------------

def free_udp_port() -> defer.Deferred[int]:
    """A UDP port free on loopback now (the device binds it next)."""
    from twisted.internet import reactor

    probe = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
    port: int = probe.getHost().port
    return defer.maybeDeferred(probe.stopListening).addCallback(lambda _: port)


def config_for(source: dict[str, Any], udp_port: int, directory: str) -> Any:
    """meteremu with ``source`` as meter ``grid`` and a Shelly Pro 3EM on ``udp_port`` and HTTP."""
    import os

    from meteremu.config import parse_config

    return parse_config({
        "server": {"host": "127.0.0.1", "http_port": 0},
        "store": {"path": os.path.join(directory, "state.db"), "persist_interval": "1h"},
        "logging": {"level": "warn"},
        "meters": {"grid": {"source": source}},
        "devices": [{"type": "shelly_pro_3em", "udp_ports": [udp_port]}],
    }, "(bench)", env={})


@defer.inlineCallbacks
def measure(app: Any, udp_port: int, change: Any, changes: int, name: str, what: str) -> Any:
    """Time ``changes`` pushes (``change(value)``) until UDP and HTTP clients see them served.

    The clock starts just before ``change``; a UDP client (``EM.GetStatus``) and
    an HTTP client (persistent connection) each ask again while an answer
    still shows the old value. 200 round trips without a change first are the
    baseline: *added* latency ≈ seen − baseline. 20 warm-up changes are dropped.
    """
    import os
    import platform

    import treq
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    http = treq.client.HTTPClient(Agent(reactor, pool=pool))
    asker = UDPAsker(udp_port)
    client_port = reactor.listenUDP(0, asker, interface="127.0.0.1")
    url = f"http://127.0.0.1:{app.http_port()}/rpc/EM.GetStatus?id=0"
    meter = app.meters["grid"]
    arrived: dict[str, float] = {}
    meter.add_listener(lambda m, r: arrived.__setitem__("t", time.perf_counter()))
    try:
        while meter.latest is None:
            yield deferLater(0.01)

        @defer.inlineCallbacks
        def http_until(want: float, t0: float) -> Any:
            while True:
                response = yield http.get(url)
                body = yield response.content()
                if json.loads(body)["a_act_power"] == want:
                    return time.perf_counter() - t0

        change(0.0)  # from a known value: the baseline asks for it
        yield asker.ask_until(0.0, time.perf_counter())
        start = 0.0
        base_udp, base_http = [], []
        for _ in range(200):
            t0 = time.perf_counter()
            base_udp.append((yield asker.ask_until(start, t0)))
            t0 = time.perf_counter()
            base_http.append((yield http_until(start, t0)))
        udp, via_http, to_meter = [], [], []
        warmup = 20
        for i in range(changes + warmup):
            want = float(1000 + i) if i % 2 else float(-500 - i)
            arrived.pop("t", None)
            t0 = time.perf_counter()
            change(want)
            a, b = yield defer.gatherResults([asker.ask_until(want, t0), http_until(want, t0)])
            if i >= warmup:
                udp.append(a)
                via_http.append(b)
                to_meter.append(arrived["t"] - t0)
    finally:
        yield client_port.stopListening()
        yield pool.closeCachedConnections()
    result: dict[str, Any] = {
        "benchmark": name, "changes": changes,
        "goal": f"p99 under 5 ms from {what} to the value served",
        "meter_update": summary(to_meter), "udp": summary(udp), "http": summary(via_http),
        "baseline_udp_rtt": summary(base_udp), "baseline_http_rtt": summary(base_http),
        "python": platform.python_version(), "platform": platform.platform(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
    }
    result["udp_p99_under_5ms"] = result["udp"]["p99_ms"] < 5.0
    result["http_p99_under_5ms"] = result["http"]["p99_ms"] < 5.0
    return result


def cli(doc: str, run: Any, extra: Any = None) -> int:
    """The scripts' command line: ``[--changes N] [--budget S] [OUT.json]``; ``run(args)`` → result.

    Runs the reactor until ``run`` fires (bounded by ``--budget``), prints
    p50/p99 per path and writes the JSON result when a path is given.
    """
    import argparse
    import sys

    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("output", nargs="?", help="write the JSON result here")
    parser.add_argument("--changes", type=int, default=500)
    parser.add_argument("--budget", type=float, default=60.0, help="abort after this many seconds")
    if extra is not None:
        extra(parser)
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
