"""Latency from a Home Assistant state change to the new value being served.

One process, one asyncio reactor, loopback only: the fake Home Assistant of
the tests (``tests/support/fake_homeassistant.py``) pushes ``subscribe_entities``
diffs to a real meteremu (a ``homeassistant`` meter and a Shelly Pro 3EM with
a UDP port and HTTP); ``bench/push_latency.measure`` times each change until a
UDP and an HTTP client see it served.

The fake server does not coalesce frames here (that would add a reactor turn
of the fake, not of meteremu). Everything shares one reactor, so the figures
include the clients' own share of it: an upper bound for meteremu.

Usage::

    python bench/ha_latency.py [--changes 500] [--budget 60] [result.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import defer, reactor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.push_latency import cli, config_for, free_udp_port, measure  # noqa: E402
from meteremu.app import build  # noqa: E402
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
    udp_port = yield free_udp_port()
    tmp = tempfile.mkdtemp(prefix="ha_latency_")
    source = {"type": "homeassistant", "url": fake.url, "token": fake.token, "entities": {"power": ENTITY}}
    app = build(config_for(source, udp_port, tmp), reactor)
    app.service.startService()
    try:
        yield fake.wait_type("subscribe_entities")
        return (yield measure(app, udp_port, lambda want: fake.set_state(ENTITY, f"{want:g}"), args.changes,
                              "ha_latency", "the Home Assistant event"))
    finally:
        yield app.service.stopService()
        yield fake.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(cli(__doc__ or "", run))
