"""Tibber Pulse source against a fake bridge replaying real SML frames (basic auth, a new frame
or the same one again, noise, a slow bridge, 401, 500, vanish) and recovery."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness, Meter
from meteremu.sources.tibber_pulse.options import TibberPulseOptions
from meteremu.sources.tibber_pulse.source import TibberPulseSource
from tests.support.fake_json import FakeJsonDevice
from tests.support.faults import wait_until
from tests.support.sml import sml_frame

PASSWORD = "AbCd-9876"
FRAMES = (sml_frame("ebz_per_phase_power.hex"), sml_frame("ebz_per_phase_power_2.hex"))


class TibberPulseTests(TestCase):
    timeout = 30

    def bridge(self, rotate: bool = True) -> FakeJsonDevice:
        fake = FakeJsonDevice(self, FRAMES[0], username="admin", password=PASSWORD)
        if rotate:  # a new frame on every request, as a live meter sends them
            def answer(request: Any) -> bytes:
                return FRAMES[len(fake.requests) % 2] if fake.body in FRAMES else fake.body

            fake.answer = answer
        return fake

    def source(self, fake: FakeJsonDevice, stale_after: float = 10.0, **extra: Any) -> TibberPulseSource:
        opts = TibberPulseOptions(host=f"127.0.0.1:{fake.port_number}", password=PASSWORD, interval=0.05,
                                  timeout=0.3, reconnect_min=0.05, reconnect_max=0.2, **extra)
        source = TibberPulseSource(Meter("grid", reactor, stale_after=stale_after), opts, reactor, rng=lambda: 1.0)
        source.startService()
        self.addCleanup(source.stopService)
        return source

    @inlineCallbacks
    def test_frames_with_basic_auth(self) -> Any:
        fake = self.bridge()
        source = self.source(fake)
        reading = yield source.when("sample").addTimeout(10, reactor)
        self.assertIn(reading.powers(), [(82.26, 27.06, 243.57), (68.54, 25.8, 1061.73)])
        self.assertEqual(fake.requests[0]["uri"], "/data.json?node_id=1")
        yield wait_until(lambda: source.samples >= 3, 10, "three new frames")
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_the_same_frame_again_is_no_new_sample(self) -> Any:
        fake = self.bridge(rotate=False)
        source = self.source(fake, stale_after=0.5)
        yield source.when("sample").addTimeout(10, reactor)
        yield wait_until(lambda: source.repeats >= 2, 10, "repeated frames")
        self.assertEqual(source.samples, 1)
        yield wait_until(lambda: source.meter.freshness() == Freshness.STALE, 10, "stale on repeats")

    @inlineCallbacks
    def test_wrong_password(self) -> Any:
        fake = self.bridge()
        opts = TibberPulseOptions(host=f"127.0.0.1:{fake.port_number}", password="nope", reconnect_max=0.2)
        source = TibberPulseSource(Meter("grid", reactor), opts, reactor)
        source.startService()
        self.addCleanup(source.stopService)
        message = yield source.when("failure").addTimeout(10, reactor)
        self.assertIn("HTTP 401", message)
        self.assertNotIn("nope", message)
        self.assertEqual(source.meter.freshness(), Freshness.DOWN)

    @inlineCallbacks
    def test_noise_faults_and_recovery(self) -> Any:
        fake = self.bridge()
        source = self.source(fake)
        yield source.when("sample").addTimeout(10, reactor)
        for body, expected in [(sml_frame("noise_issue15.hex"), "undecodable SML list"),
                               (FRAMES[0][:-12], "no complete SML frame"),
                               (sml_frame("dzg_1_8_0_only.hex"), "PIN")]:
            fake.body = body
            message = yield source.when("failure").addTimeout(10, reactor)
            self.assertIn(expected, message)
            fake.body = FRAMES[0]
            yield source.when("sample").addTimeout(10, reactor)
        for mode, status, expected in [("hang", 500, "timed out"), ("status", 500, "HTTP 500")]:
            fake.plan.set(mode, status=status)
            message = yield source.when("failure").addTimeout(10, reactor)
            self.assertIn(expected, message.lower() if expected == "timed out" else message, mode)
            fake.plan.clear()
            yield source.when("sample").addTimeout(10, reactor)
        yield fake.vanish()
        yield wait_until(lambda: source.meter.freshness() == Freshness.DOWN, 10, "down after the vanish")
        fake.back()
        yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)
