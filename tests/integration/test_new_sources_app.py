"""The new source types wired through the whole application: a config with the type, the
registry's ``make_source``, the meter manager's stale_after default, and the reading in the
meter — each against its fake device replaying real captures."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness
from tests.support import FIXTURES, start_app, test_config
from tests.support.fake_json import FakeJsonDevice
from tests.support.fake_shelly_device import FakeShellyDevice
from tests.support.faults import wait_until
from tests.support.p1 import P1Server
from tests.support.sml import sml_frame


class AppTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def run_app(self, source: dict[str, Any]) -> Any:
        config = test_config(self.mktemp(), meters={"grid": {"source": source}}, devices=[])
        app = yield start_app(self, config)
        meter = app.meters["grid"]
        yield wait_until(lambda: meter.latest is not None, 10, f"a reading from {source['type']}")
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        return meter

    @inlineCallbacks
    def test_tasmota_http(self) -> Any:
        with open(os.path.join(FIXTURES, "tasmota", "status10_sml_3phase.json"), "rb") as handle:
            fake = FakeJsonDevice(self, handle.read())
        meter = yield self.run_app({"type": "tasmota", "host": f"127.0.0.1:{fake.port_number}", "interval": "200ms",
                                    "values": {"a_power": "power_l1", "b_power": "power_l2",
                                               "c_power": "power_l3"}})
        self.assertEqual(meter.latest.powers(), (60.0, -111.0, 14.0))
        self.assertEqual(meter.stale_after, 5.0)  # 3 x 200 ms, at least 5 s

    @inlineCallbacks
    def test_tibber_pulse(self) -> Any:
        fake = FakeJsonDevice(self, sml_frame("ebz_per_phase_power.hex"), username="admin", password="pw")
        meter = yield self.run_app({"type": "tibber_pulse", "host": f"127.0.0.1:{fake.port_number}",
                                    "password": "pw", "interval": "200ms"})
        self.assertEqual(meter.latest.powers(), (82.26, 27.06, 243.57))

    @inlineCallbacks
    def test_sml_over_tcp(self) -> Any:
        server = P1Server(self)
        config = test_config(self.mktemp(), devices=[],
                             meters={"grid": {"source": {"type": "sml", "tcp": server.address}}})
        app = yield start_app(self, config)
        yield server.connected().addTimeout(10, reactor)
        server.send(sml_frame("hly_total_power_voltages.hex"))
        meter = app.meters["grid"]
        yield wait_until(lambda: meter.latest is not None, 10, "a frame")
        self.assertEqual(meter.latest.powers(), (137.0, 0.0, 0.0))
        self.assertEqual(meter.stale_after, 6.0)  # 3 x the 2 s send period

    @inlineCallbacks
    def test_shelly(self) -> Any:
        fake = FakeShellyDevice(self)
        meter = yield self.run_app({"type": "shelly", "host": fake.host})
        self.assertEqual(meter.latest.powers(), (375.5, 170.8, 12.7))

    @inlineCallbacks
    def test_esphome(self) -> Any:
        from twisted.trial.unittest import SkipTest

        from tests.support import asyncio_reactor_skip
        from tests.support.fake_esphome import KEY, FakeEsphomeDevice, three_phase

        if asyncio_reactor_skip():
            raise SkipTest(asyncio_reactor_skip())
        device = FakeEsphomeDevice(three_phase())
        port = device.listen()
        self.addCleanup(device.stop)
        meter = yield self.run_app({"type": "esphome", "host": f"127.0.0.1:{port}", "encryption_key": KEY,
                                    "values": {"a_power": "power_l1", "b_power": "power_l2", "c_power": "power_l3"}})
        yield wait_until(lambda: meter.latest.powers() == (1200.5, -250.0, 300.0), 10, "the three phases")
        self.assertEqual(meter.stale_after, 60.0)  # a push source's default
        self.assertNotIn(KEY, repr(meter.details))
