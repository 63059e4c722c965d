"""HomeWizard P1 meter: the captured v1/v2 payloads (check 25) mapped purely,
then served by local test servers — v1 over HTTP, v2 over HTTPS with a
certificate generated at test time, bearer token and WebSocket push — through
the source into a Meter and out of the Shelly's EM.GetStatus."""

from __future__ import annotations

import json
from datetime import datetime

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness, Meter
from meteremu.sources.homewizard.options import HomeWizardOptions
from meteremu.sources.homewizard.source import HomeWizardSource
from tests.support import start_app, test_config
from tests.support.fake_homewizard import TOKEN, Certificates, FakeHomeWizard
from tests.support.p1 import register_sources
from tests.support.shared.homewizard import AMS
from tests.support.udp import Battery, free_udp_ports

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
