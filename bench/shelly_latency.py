"""Latency from a real Shelly's NotifyStatus push to the new value being served (the shelly source).

One process, one asyncio reactor, loopback only: the fake Gen2 Pro 3EM of the
tests (``tests/support/fake_shelly_device.py``, a captured status, the
WebSocket ``/rpc`` with ``NotifyStatus`` deltas) feeds a real meteremu (a
``shelly`` source meter and a Shelly Pro 3EM face with a UDP port and HTTP);
``bench/push_latency.measure`` times each pushed change until a UDP and an
HTTP client see it served.

Usage::

    python bench/shelly_latency.py [--changes 500] [--budget 60] [result.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import defer, reactor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.push_latency import cli, config_for, deferLater, free_udp_port, measure  # noqa: E402
from meteremu.app import build  # noqa: E402
from meteremu.logs import set_level  # noqa: E402
from tests.support.fake_shelly_device import FakeShellyDevice  # noqa: E402


class _Case:
    """What the fake device needs of a TestCase (its cleanups run at the end)."""

    def __init__(self) -> None:
        self.cleanups: list[Callable[[], Any]] = []

    def addCleanup(self, function: Callable[[], Any]) -> None:
        self.cleanups.append(function)


def delta(status: dict[str, Any], want: float) -> dict[str, Any]:
    """A NotifyStatus delta moving phase A to ``want`` (and the total with it)."""
    em = status["em:0"]
    total = want + float(em["b_act_power"]) + float(em["c_act_power"])
    return {"em:0": {"a_act_power": want, "total_act_power": round(total, 3)}}


@defer.inlineCallbacks
def run(args: argparse.Namespace) -> Any:
    set_level("warn")
    case = _Case()
    device = FakeShellyDevice(case)  # type: ignore[arg-type]
    tmp = tempfile.mkdtemp(prefix="shelly_latency_")
    udp_port = yield free_udp_port()
    app = build(config_for({"type": "shelly", "host": device.host}, udp_port, tmp), reactor)
    app.service.startService()
    try:
        while not any(client.src for client in device.clients):
            yield deferLater(0.01)
        return (yield measure(app, udp_port, lambda want: device.notify(delta(device.status, want)),
                              args.changes, "shelly_latency", "the Shelly's NotifyStatus"))
    finally:
        yield app.service.stopService()
        for cleanup in case.cleanups:
            yield defer.maybeDeferred(cleanup)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(cli(__doc__ or "", run))
