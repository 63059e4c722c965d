"""Shared by the push-source freshness benchmarks (ha_latency.py, mqtt_latency.py).

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
