"""Shared test helpers: build and start a real meteremu on port 0, HTTP client."""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from meteremu.app import App, build
from meteremu.config import Config, parse_config
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.identity import make_identity
from meteremu.devices.shelly.options import Options
from meteremu.meter import Meter
from meteremu.reading import PhaseReading, Reading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def fixture_json(*parts: str) -> Any:
    with open(os.path.join(FIXTURES, *parts), encoding="utf-8") as handle:
        return json.load(handle)


def is_asyncio(the_reactor: object) -> bool:
    """The asyncio reactor, or meteremu's (a subclass of it)."""
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    return isinstance(the_reactor, AsyncioSelectorReactor)


def asyncio_reactor_skip() -> str | None:
    """A skip reason when the tests do not run on the asyncio reactor."""
    if not is_asyncio(reactor):
        return "needs: trial --reactor=asyncio"
    return None


def test_config(tmp: str, extra: dict[str, Any] | None = None, **sections: Any) -> Config:
    """A config listening on 127.0.0.1 port 0 with its store under ``tmp``."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "http_port": 0},
        "store": {"path": os.path.join(tmp, "state.db"), "persist_interval": "30s"},
    }
    data.update(sections)
    if extra:
        data.update(extra)
    return parse_config(data, "(test)", env={})


def start_app(case: TestCase, config: Config, clock: Any = None) -> Deferred[App]:
    """Build and start the whole service tree; stop it at test cleanup."""
    app = build(config, clock or reactor)
    app.service.startService()
    case.addCleanup(app.service.stopService)
    return app.ready().addCallback(lambda _: app)


def sample_reading(t: float = 1_700_000_000.0, powers: tuple[float, float, float] = (2166.2, 3.6, -244.0)) -> Reading:
    return Reading(
        phases=(
            PhaseReading.from_power(powers[0], voltage=227.0, pf=0.99, freq=49.9),
            PhaseReading.from_power(powers[1], voltage=230.0, pf=0.36, freq=49.9),
            PhaseReading.from_power(powers[2], voltage=230.2, pf=0.72, freq=49.9),
        ),
        measured_at=t,
    )


def make_device(clock: Any, options: Options | None = None, stale_after: float = 10.0,
                mac: str = "AABBCCDDEEFF") -> ShellyDevice:
    """A ShellyDevice over a fresh Meter (no sockets)."""
    options = options or Options(meter="grid")
    meter = Meter("grid", clock, stale_after=stale_after, source_type="test")
    return ShellyDevice(options, make_identity(options, mac), meter, clock, temperature=lambda: 46.3)


class HTTPClient:
    """treq with its own pool, closed at test cleanup (no dirty reactor)."""

    def __init__(self, case: TestCase) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        case.addCleanup(self.pool.closeCachedConnections)

    @inlineCallbacks
    def get(self, url: str, **kw: Any) -> Any:
        response = yield self.client.get(url, **kw)
        body = yield response.content()
        return response, body

    @inlineCallbacks
    def post(self, url: str, data: bytes, **kw: Any) -> Any:
        response = yield self.client.post(url, data=data, **kw)
        body = yield response.content()
        return response, body
