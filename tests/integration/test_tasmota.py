"""Tasmota source against a fake Tasmota replaying real Status 10 answers (web password in the
query, faults and recovery), and through a real mosquitto for the tele/<topic>/SENSOR pushes
(LWT Offline/Online, refused values, a broker that goes away and comes back)."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from meteremu.config import parse_config
from meteremu.meter import Freshness, Meter
from meteremu.reading import Reading
from meteremu.sources.tasmota.source import TasmotaHTTPSource, TasmotaMQTTSource
from tests.support import FIXTURES
from tests.support.fake_json import FakeJsonDevice
from tests.support.faults import wait_until
from tests.support.mosquitto import Mosquitto, Subscriber, mosquitto_skip

PASSWORD = "web-pw-9&x"
WARNING = b'{"WARNING":"Need user=<username>&password=<password>"}'
PHASES = {"a_power": "power_l1", "b_power": "power_l2", "c_power": "power_l3",
          "energy_import": {"field": "Total_in", "unit": "kWh"}}


def capture(name: str) -> bytes:
    with open(os.path.join(FIXTURES, "tasmota", name), "rb") as handle:
        return handle.read()


def options(**source: Any) -> Any:
    data = {"meters": {"m": {"source": {"type": "tasmota", **source}}}, "devices": []}
    return parse_config(data, "t.yaml", env={}).meters["m"].source.options


def next_reading(meter: Meter, predicate: Any = None, timeout: float = 10.0) -> Deferred[Reading]:
    d: Deferred[Reading] = Deferred(lambda _: meter.remove_listener(listener))

    def listener(m: Meter, reading: Reading) -> None:
        if predicate is None or predicate(reading):
            meter.remove_listener(listener)
            d.callback(reading)

    meter.add_listener(listener)
    return d.addTimeout(timeout, reactor)


class HTTPTests(TestCase):
    timeout = 30

    def fake(self, password: str | None = None) -> FakeJsonDevice:
        fake = FakeJsonDevice(self, capture("status10_sml_3phase.json"))

        def answer(request: Any) -> bytes:
            given = (request.args.get(b"user", [b""])[0], request.args.get(b"password", [b""])[0])
            if password is not None and given != (b"admin", password.encode()):
                return WARNING
            return fake.body

        fake.answer = answer
        return fake

    def source(self, fake: FakeJsonDevice, **extra: Any) -> TasmotaHTTPSource:
        opts = options(host=f"127.0.0.1:{fake.port_number}", values=PHASES, interval="50ms", timeout="300ms",
                       reconnect_min="50ms", reconnect_max="200ms", **extra)
        source = TasmotaHTTPSource(Meter("grid", reactor, stale_after=10), opts, reactor, rng=lambda: 1.0)
        source.startService()
        self.addCleanup(source.stopService)
        return source

    @inlineCallbacks
    def test_status10_with_web_password(self) -> Any:
        fake = self.fake(PASSWORD)
        source = self.source(fake, password=PASSWORD)
        reading = yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(reading.powers(), (60.0, -111.0, 14.0))
        self.assertEqual(reading.energy[0], (2687368.7, 0.0))
        self.assertIn("cmnd=Status%2010", fake.requests[0]["uri"])
        self.assertNotIn(PASSWORD, json.dumps(source.meter.details))
        # The password travels in the query: no failure message may show it.
        fake.plan.set("hang")
        message = yield source.when("failure").addTimeout(10, reactor)
        fake.plan.clear()
        yield fake.vanish()
        refused = yield source.when("failure").addTimeout(10, reactor)
        for text in (message, refused, *source._said.values()):
            self.assertNotIn("web-pw", text)

    @inlineCallbacks
    def test_wrong_password_marks_down(self) -> Any:
        fake = self.fake(PASSWORD)
        source = self.source(fake, password="wrong")
        message = yield source.when("failure").addTimeout(10, reactor)
        self.assertIn("refused the web password", message)
        self.assertEqual(source.meter.freshness(), Freshness.DOWN)
        self.assertEqual(source.state, "bad credentials")

    @inlineCallbacks
    def test_faults_and_recovery(self) -> Any:
        fake = self.fake()
        source = self.source(fake)
        yield source.when("sample").addTimeout(10, reactor)
        for mode, status, expected in [("hang", 500, "timed out"), ("garbage", 500, "unusable answer"),
                                       ("status", 500, "HTTP 500")]:
            fake.plan.set(mode, status=status)
            message = yield source.when("failure").addTimeout(10, reactor)
            self.assertIn(expected, message.lower() if expected == "timed out" else message, mode)
            fake.plan.clear()
            yield source.when("sample").addTimeout(10, reactor)
            self.assertEqual(source.meter.freshness(), Freshness.FRESH, mode)
        fake.body = capture("status10_sml_3phase.json").replace(b'"power_l2":-111', b'"power_l2":"NaN"')
        message = yield source.when("failure").addTimeout(10, reactor)
        self.assertIn("b_power (power_l2): not a finite number", message)
        yield fake.vanish()
        yield wait_until(lambda: source.meter.freshness() == Freshness.DOWN, 10, "down after the vanish")
        fake.body = capture("status10_sml_3phase.json")
        fake.back()
        yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)


class MQTTTests(TestCase):
    skip = mosquitto_skip()
    timeout = 60

    @inlineCallbacks
    def test_sensor_pushes_and_lwt(self) -> Any:
        broker = Mosquitto(self)
        yield broker.start()
        pub = Subscriber(self, broker, ("meteremu-test/none",), client_id="tasmota-fake")
        yield pub.connect()
        opts = options(mode="mqtt", topic="tasmota_8C4F2A",
                       broker={"host": "127.0.0.1", "port": broker.port, "reconnect_delay": "100ms",
                               "reconnect_max_delay": "500ms"}, values=PHASES)
        meter = Meter("grid", reactor, stale_after=30)
        source = TasmotaMQTTSource(meter, opts, reactor)
        source.startService()
        self.addCleanup(lambda: source.stopService() if source.running else None)
        yield wait_until(lambda: source.connected, 10, "the broker connection")
        sensor = capture("sensor_sml_3phase.json")
        pub.publish("tele/tasmota_8C4F2A/LWT", "Online", retain=True)
        d = next_reading(meter)
        pub.publish("tele/tasmota_8C4F2A/SENSOR", sensor)
        reading = yield d
        self.assertEqual(reading.powers(), (60.0, -111.0, 14.0))
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        # A refused value: no reading, the reason said.
        pub.publish("tele/tasmota_8C4F2A/SENSOR", sensor.replace(b'"power_l1":60', b'"power_l1":1e9'))
        yield wait_until(lambda: "beyond max_power" in source._said.get("failure", ""), 10, "the refusal")
        self.assertEqual(meter.latest.powers(), (60.0, -111.0, 14.0))
        # The device's Last Will: down until it is back and publishes again.
        pub.publish("tele/tasmota_8C4F2A/LWT", "Offline", retain=True)
        yield wait_until(lambda: meter.freshness() == Freshness.DOWN, 10, "down on Offline")
        pub.publish("tele/tasmota_8C4F2A/LWT", "Online", retain=True)
        d = next_reading(meter, lambda r: r.powers()[0] == 75.0)
        pub.publish("tele/tasmota_8C4F2A/SENSOR", sensor.replace(b'"power_l1":60', b'"power_l1":75'))
        yield d
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        # The broker goes away and comes back: the source reconnects and re-subscribes.
        yield broker.stop()
        yield wait_until(lambda: not source.connected, 10, "the lost connection")
        yield broker.start()
        yield wait_until(lambda: source.connected, 20, "the reconnection")
        pub2 = Subscriber(self, broker, ("meteremu-test/none",), client_id="tasmota-fake-2")
        yield pub2.connect()
        d = next_reading(meter, lambda r: r.powers()[0] == 80.0)
        pub2.publish("tele/tasmota_8C4F2A/SENSOR", sensor.replace(b'"power_l1":60', b'"power_l1":80'))
        yield d
