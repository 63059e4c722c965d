"""HTTP JSON source against a local fake device replaying a real Fronius Solar API answer:
authentication, POST, TLS pinning, upstream faults (hang, garbage, 401, 500, vanish) and
recovery, refused values, and end to end into a Shelly's EM.GetStatus."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness, Meter
from meteremu.sources.http_json.options import HttpJsonOptions, JsonValue, JsonValues
from meteremu.sources.http_json.source import HttpJsonSource
from tests.support import FIXTURES, start_app, test_config
from tests.support.fake_homewizard import Certificates
from tests.support.fake_json import FakeJsonDevice
from tests.support.faults import wait_until
from tests.support.udp import Battery, free_udp_ports

D = "$.Body.Data."
PASSWORD = "pw-never-logged-7731"
EM_REQUEST = b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}'


def fronius() -> bytes:
    with open(os.path.join(FIXTURES, "http_json", "fronius_smart_meter_63a_device_0.json"), "rb") as handle:
        return handle.read()


def values() -> JsonValues:
    return JsonValues(a_power=f"{D}PowerReal_P_Phase_1", b_power=f"{D}PowerReal_P_Phase_2",
                      c_power=f"{D}PowerReal_P_Phase_3", a_voltage=f"{D}Voltage_AC_Phase_1",
                      energy_import=JsonValue(path=f"{D}EnergyReal_WAC_Sum_Consumed", unit="Wh"),
                      energy_export=JsonValue(path=f"{D}EnergyReal_WAC_Sum_Produced", unit="Wh"))


class HttpJsonTests(TestCase):
    timeout = 30

    def source(self, url: str, **options: Any) -> HttpJsonSource:
        opts = {"url": url, "values": values(), "interval": 0.05, "timeout": 0.5,
                "reconnect_min": 0.05, "reconnect_max": 0.2, **options}
        meter = Meter("grid", reactor, stale_after=10)
        source = HttpJsonSource(meter, HttpJsonOptions(**opts), reactor, rng=lambda: 1.0)
        source.startService()
        self.addCleanup(source.stopService)
        return source

    @inlineCallbacks
    def test_basic_auth_poll(self) -> Any:
        fake = FakeJsonDevice(self, fronius(), username="admin", password=PASSWORD)
        source = self.source(fake.url("/solar_api/v1/GetMeterRealtimeData.cgi?Scope=Device&DeviceId=0"),
                             username="admin", password=PASSWORD)
        reading = yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(reading.powers(), (1765.55, 1515.8, 2311.22))
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)
        self.assertEqual(source.meter.latest.energy[0], (15303334.0, 35623065.0))
        self.assertEqual(fake.requests[0]["method"], "GET")
        self.assertIn("Scope=Device", fake.requests[0]["uri"])
        # Each poll is a new sample (no timestamp_path): the next one arrives too.
        first = source.meter.latest.measured_at
        yield source.when("sample").addTimeout(10, reactor)
        self.assertGreater(source.meter.latest.measured_at, first)
        self.assertEqual(source.meter.details["url"], fake.url("/solar_api/v1/GetMeterRealtimeData.cgi?…"))

    @inlineCallbacks
    def test_post_with_bearer_token_and_headers(self) -> Any:
        fake = FakeJsonDevice(self, fronius(), token="tok-123")
        source = self.source(fake.url("/rpc"), method="POST", body='{"id": 1}', token="tok-123",
                             headers={"X-Device": "meter"})
        yield source.when("sample").addTimeout(10, reactor)
        request = fake.requests[0]
        self.assertEqual((request["method"], request["body"]), ("POST", b'{"id": 1}'))
        self.assertEqual(request["headers"][b"content-type"], b"application/json")
        self.assertEqual(request["headers"][b"x-device"], b"meter")

    @inlineCallbacks
    def test_wrong_password_marks_down_and_is_not_logged(self) -> Any:
        fake = FakeJsonDevice(self, fronius(), username="admin", password="right")
        source = self.source(fake.url(), username="admin", password=PASSWORD)
        message = yield source.when("failure").addTimeout(10, reactor)
        self.assertIn("refused the credentials (HTTP 401)", message)
        self.assertNotIn(PASSWORD, message)
        self.assertEqual(source.meter.freshness(), Freshness.DOWN)
        self.assertEqual(source.state, "bad credentials")
        self.assertIsNone(source.meter.latest)

    @inlineCallbacks
    def test_repeated_meter_timestamp_is_no_new_sample(self) -> Any:
        fake = FakeJsonDevice(self, fronius())
        source = self.source(fake.url(), timestamp_path=f"{D}TimeStamp")
        reading = yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(reading.measured_at, 1633977078.0)
        repeat = yield source.when("sample").addTimeout(10, reactor)
        self.assertIsNone(repeat)  # the same time again: the meter was not refreshed
        self.assertEqual(source.samples, 1)

    @inlineCallbacks
    def test_pinned_certificate(self) -> Any:
        certs = Certificates(self.mktemp(), name="meter.local")
        fake = FakeJsonDevice(self, fronius(), tls=certs)
        source = self.source(fake.url(), tls_fingerprint=certs.fingerprint)
        reading = yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(reading.powers()[0], 1765.55)
        other = self.source(fake.url(), tls_fingerprint="AB" * 32)
        message = yield other.when("failure").addTimeout(10, reactor)
        self.assertIn("does not match tls_fingerprint", message)

    @inlineCallbacks
    def test_refused_values_are_never_served(self) -> Any:
        body = json.loads(fronius())
        body["Body"]["Data"]["PowerReal_P_Phase_2"] = 250000
        fake = FakeJsonDevice(self, json.dumps(body).encode())
        source = self.source(fake.url())
        message = yield source.when("failure").addTimeout(10, reactor)
        self.assertIn("b_power ($.Body.Data.PowerReal_P_Phase_2): 250000 W is beyond max_power", message)
        self.assertIsNone(source.meter.latest)
        fake.body = fronius().replace(b'"PowerReal_P_Phase_2": 1515.8', b'"PowerReal_P_Phase_2": NaN')
        yield wait_until(lambda: "NaN is not a number" in source._said.get("failure", ""), 10, "NaN refused")
        self.assertIsNone(source.meter.latest)
        fake.body = fronius()
        reading = yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(reading.powers()[1], 1515.8)

    @inlineCallbacks
    def test_faults_and_recovery(self) -> Any:
        fake = FakeJsonDevice(self, fronius())
        source = self.source(fake.url(), timeout=0.3)
        yield source.when("sample").addTimeout(10, reactor)
        for mode, status, expected in [("hang", 500, "timed out"), ("garbage", 500, "unusable answer"),
                                       ("status", 500, "HTTP 500"), ("status", 401, "HTTP 401")]:
            fake.plan.set(mode, status=status)
            message = yield source.when("failure").addTimeout(10, reactor)
            self.assertIn(expected, message.lower() if expected == "timed out" else message, mode)
            fake.plan.clear()
            yield source.when("sample").addTimeout(10, reactor)
            self.assertEqual(source.meter.freshness(), Freshness.FRESH, mode)
        yield fake.vanish()
        yield wait_until(lambda: source.meter.freshness() == Freshness.DOWN, 10, "down after the vanish")
        self.assertGreaterEqual(source.failures_in_row, 3)
        fake.back()
        yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)


class EndToEndTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_config_to_em_getstatus(self) -> Any:
        fake = FakeJsonDevice(self, fronius())
        udp_port = free_udp_ports(1)[0]
        source = {"type": "http_json", "url": fake.url(), "interval": "200ms",
                  "values": {"power": f"{D}PowerReal_P_Sum"}}
        config = test_config(self.mktemp(), meters={"grid": {"source": source}},
                             devices=[{"type": "shelly_pro_3em", "udp_ports": [udp_port]}])
        app = yield start_app(self, config)
        meter = app.meters["grid"]
        if meter.latest is None:
            yield app.sources["grid"].when("sample").addTimeout(10, reactor)
        battery = Battery()
        listening = reactor.listenUDP(0, battery, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        status = json.loads((yield battery.ask(EM_REQUEST, udp_port)))["result"]
        self.assertEqual(status["a_act_power"], 5592.6)  # the Shelly rounds to 0.1 W
        self.assertEqual(status["total_act_power"], 5592.57)
