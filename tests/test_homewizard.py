"""HomeWizard P1 meter: the captured v1/v2 payloads (check 25) mapped purely,
then served by local test servers — v1 over HTTP, v2 over HTTPS with a
certificate generated at test time, bearer token and WebSocket push — through
the source into a Meter and out of the Shelly's EM.GetStatus."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meteremu.config import ConfigError, parse_config
from meteremu.meter import Freshness, Meter
from meteremu.sources.homewizard.options import HomeWizardOptions, host_port
from meteremu.sources.homewizard.parse import parse_measurement, parse_v1_time
from meteremu.sources.homewizard.source import HomeWizardSource
from tests.support import start_app, test_config
from tests.support.fake_homewizard import TOKEN, Certificates, FakeHomeWizard, v1_body, v2_body
from tests.support.p1 import register_sources
from tests.support.udp import Battery, free_udp_ports

AMS = ZoneInfo("Europe/Amsterdam")
ARRIVAL = 2_000_000_000.0


class MappingTests(SynchronousTestCase):
    def test_v1_fixture(self):
        # Check 25 (v1).
        m = parse_measurement(v1_body(), "v1", ARRIVAL, AMS)
        r = m.reading
        self.assertEqual(r.powers(), (-676.0, 133.0, 0.0))
        self.assertEqual(r.total_act_power, -543.0)
        self.assertEqual([p.current for p in r.phases], [4.0, 2.0, 0.0])  # |−4|: currents are unsigned
        self.assertEqual([p.voltage for p in r.phases], [230.0] * 3)  # no voltage keys: nominal
        self.assertEqual([p.freq for p in r.phases], [50.0] * 3)
        for p in r.phases:
            self.assertLessEqual(abs(p.pf), 1.0)
        self.assertEqual(r.energy, ((13779338.0, 0.0),))  # 10830.511 + 2948.827 kWh, on phase A
        self.assertEqual(r.measured_at, ARRIVAL)  # v1 has no timestamp
        x = r.extras
        self.assertEqual(x["gas_m3"], 2569.646)
        self.assertEqual(x["month_peak_w"], 1111.0)  # from the misspelled montly_power_peak_w
        self.assertEqual(x["average_demand_w"], 123.0)
        self.assertEqual((x["energy_import_t1_kwh"], x["energy_import_t2_kwh"]), (10830.511, 2948.827))
        self.assertEqual(x["tariff"], 2.0)
        self.assertEqual((x["water_m3"], x["warm_water_m3"]), (444.444, 333.333))
        self.assertNotIn("gas_m3.4E474C5944", x)  # the same gas meter, listed twice
        self.assertEqual(m.labels["water_m3"], {"kind": "water", "unique_id": "4E475347"})
        gas = [d for d in m.devices if d["key"] == "gas_m3"][0]
        self.assertEqual(gas["at"], "2021-06-06T14:00:10+02:00")
        self.assertEqual((m.smr_version, m.meter_model), (50, "ISKRA  2M550T-101"))

    def test_v2_fixture(self):
        # Check 25 (v2): same numbers under other names.
        m = parse_measurement(v2_body(), "v2", ARRIVAL, AMS)
        r = m.reading
        self.assertEqual(r.powers(), (-676.0, 133.0, 0.0))
        self.assertEqual(r.energy, ((13779338.0, 0.0),))
        self.assertEqual(sum(p.current for p in r.phases), 6.0)  # current_a = |−4|+|2|+|0|
        self.assertEqual(r.measured_at, datetime(2024, 6, 28, 14, 12, 34, tzinfo=AMS).timestamp())
        self.assertEqual((r.extras["gas_m3"], r.extras["water_m3"]), (2569.646, 123.456))
        self.assertEqual(r.extras["month_peak_w"], 1111.0)
        self.assertEqual(parse_measurement(v2_body(), "v2", ARRIVAL, AMS, "arrival").reading.measured_at,
                         ARRIVAL)

    def test_missing_keys_are_not_zero(self):
        body = {"power_w": 512, "timestamp": "2024-06-28T14:12:34"}
        r = parse_measurement(body, "v2", ARRIVAL, AMS).reading
        self.assertEqual(r.powers(), (512.0,))  # a total only: phase A
        self.assertIsNone(r.energy)
        self.assertEqual(dict(r.extras), {})
        body = {"power_w": 512, "power_l1_w": 500, "voltage_l1_v": 231.5, "energy_export_kwh": 1.5,
                "external": [{"type": "heat_meter", "value": 1.0, "unit": "GJ", "unique_id": "H"},
                             {"type": "gas_meter", "value": None, "unit": "m3"}, "junk"]}
        r = parse_measurement(body, "v2", ARRIVAL, AMS).reading
        self.assertEqual(r.powers(), (500.0,))
        self.assertEqual(r.phases[0].voltage, 231.5)
        self.assertEqual(r.energy, ((0.0, 1500.0),))
        self.assertAlmostEqual(r.extras["heat_energy_kwh"], 277.7778, places=4)
        self.assertNotIn("gas_m3", r.extras)
        self.assertRaises(ValueError, parse_measurement, {"wifi_ssid": "x"}, "v1", ARRIVAL)
        self.assertRaises(ValueError, parse_measurement, [1, 2], "v1", ARRIVAL)
        self.assertRaises(ValueError, parse_measurement, {"active_power_w": "12"}, "v1", ARRIVAL)

    def test_helpers(self):
        self.assertEqual(host_port("192.168.1.50", 443), ("192.168.1.50", 443))
        self.assertEqual(host_port("p1.local:8443", 443), ("p1.local", 8443))
        self.assertEqual(host_port("[fe80::1]:444", 443), ("fe80::1", 444))
        self.assertIsNone(parse_v1_time(2106061400, AMS))


class OptionsTests(SynchronousTestCase):
    def setUp(self):
        register_sources(self)

    def parse(self, **source):
        data = {"meters": {"p1": {"source": {"type": "homewizard", **source}}}, "devices": []}
        return parse_config(data, "t.yaml", env={}).meters["p1"].source.options

    def test_defaults(self):
        options = self.parse(host="192.168.1.50")
        self.assertEqual((options.api, options.interval, options.idle()), ("v1", 1.0, 30.0))
        options = self.parse(host="p1", api="v2", token=TOKEN, verify_ssl=False)
        self.assertEqual(options.mode, "websocket")
        self.assertNotIn(TOKEN, repr(options))

    def test_errors(self):
        cases = [
            ({"host": "p1", "token": TOKEN}, "token"),
            ({"host": "p1", "api": "v2", "verify_ssl": False}, "token"),
            ({"host": "p1", "api": "v2", "token": TOKEN}, "tls_fingerprint"),
            ({"host": "p1", "api": "v2", "token": TOKEN, "tls_fingerprint": "abc"}, "tls_fingerprint"),
            ({"host": "p1", "api": "v2", "token": TOKEN, "tls_fingerprint": "ab" * 32,
              "verify_ssl": False}, "verify_ssl"),
            ({"host": "p1", "api": "v2", "token": TOKEN, "ca_file": "/nonexistent.pem"}, "ca_file"),
            ({"host": "p1", "api": "v2", "token": TOKEN, "verify_ssl": False, "tls_name": "x"}, "tls_name"),
            ({"host": "http://p1/"}, "host"),
            ({"host": "p1", "timezone": "Mars/Olympus"}, "timezone"),
        ]
        for source, key in cases:
            with self.assertRaises(ConfigError) as caught:
                self.parse(**source)
            self.assertEqual(caught.exception.key, f"meters.p1.source.{key}", source)


EM_REQUEST = b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}'


class V1EndToEndTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_v1_poll_to_em_getstatus(self):
        register_sources(self)
        fake = FakeHomeWizard(self, "v1")
        udp_port = free_udp_ports(1)[0]
        config = test_config(self.mktemp(),
                             meters={"grid": {"source": {"type": "homewizard", "host": fake.host,
                                                         "interval": "200ms"}}},
                             devices=[{"type": "shelly_pro_3em", "udp_ports": [udp_port]}])
        app = yield start_app(self, config)
        meter, source = app.meters["grid"], app.sources["grid"]
        if meter.latest is None:
            yield source.when("sample").addTimeout(10, reactor)
        battery = Battery()
        listening = reactor.listenUDP(0, battery, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        status = json.loads((yield battery.ask(EM_REQUEST, udp_port)))["result"]
        self.assertEqual([status[f"{p}_act_power"] for p in "abc"], [-676.0, 133.0, 0.0])
        self.assertEqual(status["total_act_power"], -543.0)
        self.assertEqual(status["a_current"], 4.0)
        data = json.loads((yield battery.ask(b'{"id":2,"method":"EMData.GetStatus","params":{"id":0}}',
                                             udp_port)))["result"]
        self.assertEqual(data["a_total_act_energy"], 13779338.0)
        # Every poll is a new sample (v1 has no timestamp): the next one arrives too.
        first = meter.latest.measured_at
        sample = yield source.when("sample").addTimeout(10, reactor)
        self.assertGreater(sample.reading.measured_at, first)
        self.assertEqual(meter.details["connection"], "polling")
        self.assertEqual(meter.extra_labels["gas_m3"]["kind"], "gas")
        self.assertNotIn(b"authorization", fake.requests[0])


class V2Tests(TestCase):
    timeout = 30

    def setUp(self):
        self.certs = Certificates(self.mktemp())

    def source(self, fake: FakeHomeWizard, clock=None, **options) -> HomeWizardSource:
        opts = {"host": fake.host, "api": "v2", "token": TOKEN, "timezone": "Europe/Amsterdam",
                "reconnect_min": 0.05, "reconnect_max": 0.2, **options}
        meter = Meter("p1", reactor, stale_after=10)
        source = HomeWizardSource(meter, HomeWizardOptions(**opts), reactor, clock=clock, rng=lambda: 1.0)
        return source

    def run_source(self, source: HomeWizardSource) -> None:
        source.startService()
        self.addCleanup(source.stopService)

    @inlineCallbacks
    def test_poll_with_pinned_certificate(self):
        fake = FakeHomeWizard(self, "v2", self.certs)
        source = self.source(fake, mode="poll", tls_fingerprint=self.certs.fingerprint)
        sample = source.when("sample")
        self.run_source(source)
        m = yield sample.addTimeout(10, reactor)
        self.assertEqual(m.reading.powers(), (-676.0, 133.0, 0.0))
        self.assertEqual(source.meter.latest, m.reading)
        headers = fake.requests[0]
        self.assertEqual(headers[b"authorization"], f"Bearer {TOKEN}".encode())
        self.assertEqual(headers[b"x-api-version"], b"2")
        # The same timestamp again is a repeat, not a new sample.
        yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(source.meter.latest, m.reading)
        self.assertGreaterEqual(len(fake.requests), 2)

    @inlineCallbacks
    def test_wrong_fingerprint_is_refused_and_named(self):
        fake = FakeHomeWizard(self, "v2", self.certs)
        source = self.source(fake, mode="poll", tls_fingerprint="AB" * 32)
        failed = source.when("failure")
        self.run_source(source)
        message = yield failed.addTimeout(10, reactor)
        self.assertIn("does not match tls_fingerprint", message)
        self.assertIn(self.certs.fingerprint, message)
        self.assertEqual(fake.requests, [])  # the token never left

    @inlineCallbacks
    def test_bad_token_marks_down_and_backs_off(self):
        fake = FakeHomeWizard(self, "v2", self.certs, token="F" * 32)
        clock = Clock()
        source = self.source(fake, clock=clock, mode="poll", verify_ssl=False)
        failed = source.when("failure")
        self.run_source(source)
        clock.advance(0)
        message = yield failed.addTimeout(10, reactor)
        self.assertIn("rejected the token (HTTP 401)", message)
        self.assertEqual(source.meter.freshness(), Freshness.DOWN)
        self.assertEqual(source.state, "bad token")
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [0.2])  # reconnect_max
        self.assertNotIn(TOKEN, message)

    @inlineCallbacks
    def test_websocket_push_with_ca_and_name(self):
        fake = FakeHomeWizard(self, "v2", self.certs)
        source = self.source(fake, ca_file=self.certs.ca_file, tls_name="appliance/p1dongle/5c2fafaabbcc")
        sample = source.when("sample")
        self.run_source(source)
        m = yield sample.addTimeout(10, reactor)
        self.assertEqual(m.reading.powers(), (-676.0, 133.0, 0.0))
        self.assertEqual(fake.ws_messages, [{"type": "authorization", "data": TOKEN},
                                            {"type": "subscribe", "data": "measurement"}])
        self.assertEqual(source.state, "connected")
        # A push with a new timestamp and new values.
        sample = source.when("sample")
        fake.push({"timestamp": "2024-06-28T14:12:35", "power_l1_w": -700, "power_w": -567})
        m = yield sample.addTimeout(10, reactor)
        self.assertEqual(source.meter.latest.powers(), (-700.0, 133.0, 0.0))
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_websocket_wrong_name_is_refused(self):
        fake = FakeHomeWizard(self, "v2", self.certs)
        source = self.source(fake, ca_file=self.certs.ca_file, tls_name="appliance/p1dongle/000000000000")
        failed = source.when("failure")
        self.run_source(source)
        message = yield failed.addTimeout(10, reactor)
        self.assertIn("certificate is not for appliance/p1dongle/000000000000", message)

    @inlineCallbacks
    def test_websocket_bad_token(self):
        fake = FakeHomeWizard(self, "v2", self.certs, token="F" * 32)
        source = self.source(fake, verify_ssl=False)
        failed = source.when("failure")
        self.run_source(source)
        message = yield failed.addTimeout(10, reactor)
        self.assertIn("rejected the token", message)
        self.assertEqual(source.meter.freshness(), Freshness.DOWN)
        self.assertEqual(source.state, "bad token")
        self.assertEqual(fake.ws_messages, [{"type": "authorization", "data": TOKEN}])

    @inlineCallbacks
    def test_websocket_idle_and_dropped_connections_reconnect(self):
        fake = FakeHomeWizard(self, "v2", self.certs)
        clock = Clock()
        source = self.source(fake, clock=clock, verify_ssl=False, interval=1.0)
        subscribed = fake.subscribed()
        self.run_source(source)
        clock.advance(0)
        yield subscribed.addTimeout(10, reactor)
        if source.state != "connected":
            yield source.when("connected").addTimeout(10, reactor)
        # The server goes quiet: after idle_timeout (30 s) the source reconnects.
        fake.mute = True
        closed = fake.closed()
        clock.advance(30)
        yield closed.addTimeout(10, reactor)
        self.assertEqual(source.meter.freshness(), Freshness.DOWN)
        self.assertIn("no message", source.meter.down_reason)
        subscribed = fake.subscribed()
        clock.advance(0.05)
        yield subscribed.addTimeout(10, reactor)
        fake.mute = False
        # The server drops the connection: down, then back after the backoff.
        closed_event = source.when("disconnected")
        fake.drop()
        yield closed_event.addTimeout(10, reactor)
        subscribed = fake.subscribed()
        clock.advance(0.2)
        ws = yield subscribed.addTimeout(10, reactor)
        # The first message after a reconnect repeats the last measurement: not
        # new, so the meter stays down until the next telegram's push.
        fake.push({"timestamp": "2024-06-28T14:20:00"})
        pushed = datetime(2024, 6, 28, 14, 20, tzinfo=AMS).timestamp()
        while source.meter.latest.measured_at != pushed:
            yield source.when("sample").addTimeout(10, reactor)
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)
        self.assertEqual(source.connections, 3)
        self.assertTrue(ws.subscribed)

    @inlineCallbacks
    def test_dsmr4_meter_gets_a_longer_stale_after(self):
        fake = FakeHomeWizard(self, "v2", self.certs)
        fake.body["protocol_version"] = 42
        meter = Meter("p1", reactor, stale_after=5.0)  # the default for interval 1 s
        source = HomeWizardSource(meter, HomeWizardOptions(host=fake.host, api="v2", token=TOKEN,
                                                           verify_ssl=False, mode="poll"), reactor)
        sample = source.when("sample")
        self.run_source(source)
        yield sample.addTimeout(10, reactor)
        self.assertEqual(meter.stale_after, 30.0)
