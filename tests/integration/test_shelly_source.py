"""A real Shelly as the source, against a fake Pro 3EM replaying a captured Shelly.GetStatus:
HTTP RPC polling with digest auth, the WebSocket (GetStatus, NotifyStatus pushes, the 401
challenge answered), polling taking over while the WebSocket is down, faults and recovery."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness, Meter
from meteremu.sources.shelly.options import ShellyOptions
from meteremu.sources.shelly.source import ShellySource
from tests.support import FIXTURES
from tests.support.fake_json import FakeJsonDevice
from tests.support.fake_shelly_device import FakeShellyDevice
from tests.support.faults import wait_until

PASSWORD = "shelly-pw-42"


class ShellySourceTests(TestCase):
    timeout = 30

    def source(self, fake: FakeShellyDevice, **options: Any) -> ShellySource:
        settings: dict[str, Any] = {"interval": 0.05, "timeout": 0.5, "reconnect_min": 0.05, "reconnect_max": 0.2,
                                    **options}
        opts = ShellyOptions(host=fake.host, **settings)
        source = ShellySource(Meter("grid", reactor, stale_after=10), opts, reactor, rng=lambda: 1.0)
        source.startService()
        self.addCleanup(source.stopService)
        return source

    @inlineCallbacks
    def test_poll_with_digest(self) -> Any:
        fake = FakeShellyDevice(self, password=PASSWORD)
        source = self.source(fake, mode="poll", password=PASSWORD)
        reading = yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(reading.powers(), (375.5, 170.8, 12.7))
        self.assertEqual(reading.energy[2], (369469.8, 985.91))
        self.assertEqual(fake.requests[0], "")  # the first request learns the challenge
        self.assertTrue(fake.requests[1].startswith("Digest "))
        self.assertNotIn(PASSWORD, "".join(fake.requests))
        yield wait_until(lambda: source.samples >= 3, 10, "more polls")
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_wrong_password_marks_down(self) -> Any:
        fake = FakeShellyDevice(self, password=PASSWORD)
        source = self.source(fake, mode="poll", password="wrong")
        message = yield source.when("failure").addTimeout(10, reactor)
        self.assertIn("HTTP 401", message)
        self.assertEqual(source.meter.freshness(), Freshness.DOWN)

    @inlineCallbacks
    def test_a_poll_landing_after_the_websocket_went_live_leaves_it_connected(self) -> Any:
        fake = FakeShellyDevice(self)
        fake.hold_http = True
        source = self.source(fake, timeout=10.0)  # the held poll stays on its way
        yield wait_until(lambda: fake.held, 10, "a poll on its way")
        yield wait_until(lambda: source.ws_live, 10, "the WebSocket feeding the meter")
        fake.release_http()
        yield wait_until(lambda: source._inflight is None, 10, "the held poll answered")
        self.assertEqual(source.state, "connected")
        polls = source.polls
        yield deferLater(reactor, 0.3, lambda: None)  # six poll intervals
        self.assertEqual(source.polls, polls)  # and polling stays paused

    @inlineCallbacks
    def test_websocket_push_with_auth_and_fallback(self) -> Any:
        fake = FakeShellyDevice(self, password=PASSWORD)
        source = self.source(fake, password=PASSWORD)
        yield wait_until(lambda: source.ws_live, 10, "the WebSocket feeding the meter")
        self.assertEqual(fake.ws_frames[0]["method"], "Shelly.GetStatus")
        self.assertIn("auth", fake.ws_frames[1])
        self.assertEqual(source.state, "connected")
        polls = source.polls
        sample = source.when("sample")
        fake.notify({"em:0": {"a_act_power": -640.5, "total_act_power": -457.0}})
        reading = yield sample.addTimeout(10, reactor)
        self.assertEqual(reading.powers(), (-640.5, 170.8, 12.7))
        self.assertLessEqual(source.polls - polls, 1)  # the poll pauses while the WebSocket is live
        # Steady values are asked for again over the WebSocket: the meter stays fresh without pushes.
        calls = len(fake.ws_frames)
        yield wait_until(lambda: len(fake.ws_frames) >= calls + 3, 10, "GetStatus calls over the WebSocket")
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)
        # The WebSocket drops and cannot come back: polling takes over, then the WebSocket returns.
        fake.refuse_websockets = True
        fake.drop_websockets()
        yield wait_until(lambda: source.polls > polls + 2, 10, "polling while the WebSocket is down")
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)
        fake.refuse_websockets = False
        yield wait_until(lambda: source.ws_live, 10, "the WebSocket back")

    @inlineCallbacks
    def test_websocket_wrong_password(self) -> Any:
        fake = FakeShellyDevice(self, password=PASSWORD)
        source = self.source(fake, password="wrong")
        yield wait_until(lambda: source.ws_auth_failed, 10, "the refused password")
        yield wait_until(lambda: source.meter.freshness() == Freshness.DOWN, 10, "down")
        self.assertFalse(source.ws_live)

    @inlineCallbacks
    def test_faults_and_recovery(self) -> Any:
        fake = FakeShellyDevice(self)
        source = self.source(fake, mode="poll")
        yield source.when("sample").addTimeout(10, reactor)
        for mode, expected in [("hang", "timed out"), ("garbage", "unusable answer"), ("status", "HTTP 500")]:
            fake.plan.set(mode, status=500)
            message = yield source.when("failure").addTimeout(10, reactor)
            self.assertIn(expected, message.lower() if expected == "timed out" else message, mode)
            fake.plan.clear()
            yield source.when("sample").addTimeout(10, reactor)
        fake.status["em:0"]["b_act_power"] = "NaN"
        message = yield source.when("failure").addTimeout(10, reactor)
        self.assertIn("em:0.b_act_power", message)
        fake.status["em:0"]["b_act_power"] = 170.8
        yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)


class Gen1Tests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_status_with_basic_auth(self) -> Any:
        with open(os.path.join(FIXTURES, "shelly_gen1", "status_shelly_em.json"), "rb") as handle:
            fake = FakeJsonDevice(self, handle.read(), username="admin", password=PASSWORD)
        opts = ShellyOptions(host=f"127.0.0.1:{fake.port_number}", gen=1, password=PASSWORD, interval=0.05,
                             reconnect_min=0.05, reconnect_max=0.2)
        source = ShellySource(Meter("grid", reactor, stale_after=10), opts, reactor, rng=lambda: 1.0)
        source.startService()
        self.addCleanup(source.stopService)
        reading = yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(reading.powers(), (-620.34,))
        self.assertEqual(reading.energy, ((401472.9, 653673.7),))
        self.assertEqual(fake.requests[0]["uri"], "/status")
        self.assertIsNone(source.reconnector)  # no WebSocket for Gen1
