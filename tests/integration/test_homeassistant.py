"""Home Assistant source (specs/sources-sinks.md §1, conformance checks 20-24).

Pure parts are table-driven and synchronous; the I/O tests run the real
client (autobahn + treq) against ``tests/support/fake_homeassistant.py`` on
loopback. Timers of the source (backoff, ping, poll) run on a ``Clock`` where
a test needs to control them; sockets always use the real reactor.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness, Meter
from meteremu.reading import Reading
from meteremu.sources.homeassistant.client import HomeAssistantSource
from meteremu.sources.homeassistant.options import Entities, HomeAssistantOptions
from tests.support import ROOT, HTTPClient, asyncio_reactor_skip, start_app, test_config
from tests.support.fake_homeassistant import (
    DSMR_ENERGY,
    HOMEWIZARD_POWER,
    FakeHomeAssistant,
)
from tests.support.shared.homeassistant import DSMR_STATES, W
from tests.support.udp import Battery, free_udp_ports

WAIT = 10.0


def next_reading(meter: Meter, predicate: Any = None, timeout: float = WAIT) -> Deferred[Reading]:
    """The next Reading the meter accepts (that matches ``predicate``)."""
    holder: list[Any] = []

    def cancel(_: Deferred[Reading]) -> None:
        meter.remove_listener(holder[0])

    d: Deferred[Reading] = Deferred(cancel)

    def listener(m: Meter, reading: Reading) -> None:
        if predicate is None or predicate(reading):
            meter.remove_listener(listener)
            d.callback(reading)

    holder.append(listener)
    meter.add_listener(listener)
    return d.addTimeout(timeout, reactor)


def until(condition: Any, timeout: float = WAIT) -> Deferred[None]:
    """Fires when ``condition()`` holds, checked every 5 ms; fails after ``timeout``."""
    d: Deferred[None] = Deferred()
    calls: list[Any] = []

    def check() -> None:
        if d.called:
            return
        if condition():
            d.callback(None)
        else:
            calls[:] = [reactor.callLater(0.005, check)]

    def stop(result: Any) -> Any:
        for call in calls:
            if call.active():
                call.cancel()
        return result

    check()
    return d.addTimeout(timeout, reactor).addBoth(stop)


class LogCapture:
    def __init__(self, case: TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(f"{formatEvent(e)} {e!r}" for e in self.events)


class SourceTestBase(TestCase):
    timeout = 30
    skip = asyncio_reactor_skip()

    def setUp(self) -> None:
        self.fake = FakeHomeAssistant(token="s3cret-token-XYZ")
        self.fake.listen()
        self.addCleanup(self.fake.stop)

    def start(self, clock: Any = None, meter_clock: Any = None, **options: Any) -> HomeAssistantSource:
        options.setdefault("url", self.fake.url)
        options.setdefault("token", self.fake.token)
        self.meter = Meter("grid", meter_clock or reactor, stale_after=60.0, source_type="homeassistant")
        self.source = HomeAssistantSource(self.meter, HomeAssistantOptions(**options), reactor,
                                          clock=clock, rng=lambda: 1.0)
        self.source.startService()
        self.addCleanup(self.source.stopService)
        if clock is not None:
            clock.advance(0)
        return self.source

    def subscribed(self, start: int = 0) -> Deferred[Any]:
        return self.fake.wait_type("subscribe_entities", start)

    def connected(self) -> Deferred[None]:
        """Fires once the source handled the subscription result."""
        return until(lambda: self.source.state == "connected")


class WebSocketTests(SourceTestBase):
    @inlineCallbacks
    def test_subscribe_and_push(self) -> Any:
        self.fake.set_state("sensor.grid_power", "512", W)
        self.fake.set_state("sensor.other", "1", W)
        self.start(entities=Entities(power="sensor.grid_power", a_voltage="sensor.not_there_yet"))
        first = yield next_reading(self.meter)
        self.assertEqual(first.total_act_power, 512.0)
        self.assertEqual(first.measured_at, round(self.fake.states["sensor.grid_power"].last_changed, 6))
        yield self.connected()
        auth, *commands = self.fake.received
        self.assertEqual(auth, {"type": "auth", "access_token": "s3cret-token-XYZ"})
        ids = [m["id"] for m in commands]
        self.assertEqual(ids, sorted(set(ids)))  # strictly increasing
        sub = [m for m in commands if m["type"] == "subscribe_entities"][0]
        self.assertEqual(sub["entity_ids"], ["sensor.grid_power", "sensor.not_there_yet"])
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        # a state change is pushed: new value with the entity's timestamp
        d = next_reading(self.meter)
        self.fake.set_state("sensor.grid_power", "-0.25", {**W, "unit_of_measurement": "kW"})
        reading = yield d
        self.assertEqual(reading.total_act_power, -250.0)
        self.assertEqual(reading.measured_at, round(self.fake.states["sensor.grid_power"].last_changed, 6))
        # an entity created later arrives as "a" and joins the reading
        d = next_reading(self.meter)
        self.fake.set_state("sensor.not_there_yet", "231.5", {"unit_of_measurement": "V"})
        reading = yield d
        self.assertEqual(reading.phases[0].voltage, 231.5)
        # REST seeding asks for every watched entity; the requests run beside the WebSocket, so
        # under load one may still be on its way when the pushes above have arrived
        seeded = {"/api/states/sensor.grid_power", "/api/states/sensor.not_there_yet"}
        yield until(lambda: seeded <= set(self.fake.rest_requests))
        self.assertEqual(self.meter.details["connection"], "connected")
        self.assertEqual(self.meter.details["mapping"]["origin"], "configured")

    @inlineCallbacks
    def test_batched_changes_and_coalesced_frames(self) -> Any:
        for n in "abc":
            self.fake.set_state(f"sensor.{n}", "1", W)
        self.fake.set_state("sensor.h", "1", W)
        self.start(entities=Entities(a_power="sensor.a", b_power="sensor.b", c_power="sensor.c"),
                   circuits={"hvac": "sensor.h"})
        yield next_reading(self.meter)
        yield self.connected()
        d = next_reading(self.meter)
        with self.fake.batch():
            self.fake.set_state("sensor.a", "10")
            self.fake.set_state("sensor.b", "20")
            self.fake.remove("sensor.h")
            self.fake.set_state("sensor.c", "30")
        reading = yield d
        self.assertEqual(reading.powers(), (10.0, 20.0, 30.0))
        self.assertEqual(dict(reading.extras), {})
        self.assertTrue(all(c.coalesce for c in self.fake.connections))

    @inlineCallbacks
    def test_unavailable_is_down_unknown_keeps_the_value(self) -> Any:
        self.fake.set_state("sensor.p", "100", W)
        self.start(entities=Entities(power="sensor.p"))
        yield next_reading(self.meter)
        yield self.connected()
        start = len(self.fake.received)
        self.fake.set_state("sensor.p", "unknown", W)
        self.fake.set_state("sensor.p", "unavailable", W)
        # wait until the source has seen it: a ping round trip orders the stream
        self.source._ping(self.source.session)
        yield self.fake.wait_type("ping", start)
        yield until(lambda: self.meter.freshness() is Freshness.DOWN)
        self.assertEqual(self.meter.down_reason, "sensor.p is unavailable")
        self.assertEqual(self.meter.latest.total_act_power, 100.0)  # no sample from unknown
        d = next_reading(self.meter)
        self.fake.set_state("sensor.p", "150", W)
        reading = yield d
        self.assertEqual(reading.total_act_power, 150.0)
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_missing_entity_is_down_until_it_appears(self) -> Any:
        self.start(entities=Entities(power="sensor.late"))
        yield until(lambda: self.meter.freshness() is Freshness.DOWN)
        self.assertEqual(self.meter.down_reason, "sensor.late does not exist in Home Assistant")
        yield self.connected()
        d = next_reading(self.meter)
        self.fake.set_state("sensor.late", "42", W)
        yield d
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_bad_token_backs_off_without_a_retry_storm(self) -> Any:
        log = LogCapture(self)
        clock = Clock()
        self.start(clock=clock, token="wrong-token-123", entities=Entities(power="sensor.p"),
                   reconnect_max=300.0)
        # The REST seed runs beside the WebSocket; its timeout is on the same clock
        # until its 401 arrives: wait for it too (it was the order dependence).
        yield until(lambda: self.source.state == "bad token" and self.source.session is None
                    and not self.source.http.busy)
        self.assertEqual(self.fake.auth_failures, 1)
        self.assertEqual(self.meter.freshness(), Freshness.DOWN)
        self.assertIn("rejected the access token", self.meter.stats.last_error)
        delays = [call.getTime() - clock.seconds() for call in clock.getDelayedCalls()]
        self.assertEqual(delays, [300.0])
        clock.advance(299)
        self.assertEqual(self.fake.auth_failures, 1)
        self.assertNotIn("wrong-token-123", log.text())
        self.assertNotIn("wrong-token-123", json.dumps(self.meter.details))

    @inlineCallbacks
    def test_the_example_files_url_reaches_home_assistant(self) -> Any:
        """Issue #22.18: every example's URLs, exercised against the fake server."""
        import dataclasses
        from urllib.parse import urlsplit

        from meteremu.config import load_meter_file

        example = load_meter_file(os.path.join(ROOT, "etc", "examples", "homeassistant.yaml"),
                                  env={"HA_TOKEN": self.fake.token}).source.options
        here = urlsplit(self.fake.url)
        url = urlsplit(example.url)._replace(scheme=here.scheme, netloc=here.netloc).geturl()
        self.fake.set_state("sensor.p1_meter_power", "321", W)
        fields = {f.name: getattr(example, f.name) for f in dataclasses.fields(example)}
        self.start(**{**fields, "url": url})
        reading = yield next_reading(self.meter)  # from the REST seed or the WebSocket, whichever is first
        self.assertEqual(reading.total_act_power, 321.0)
        yield self.connected()
        self.assertEqual(len(self.fake.connections), 1)  # the WebSocket is served at /api/websocket only

    @inlineCallbacks
    def test_an_echoing_server_never_gets_the_token_into_health(self) -> Any:
        """Issue #22.17: HA's auth_invalid text went into last_error, which /healthz shows."""
        log = LogCapture(self)
        self.fake.echo_auth = True
        self.start(clock=Clock(), token="wrong-token-456", entities=Entities(power="sensor.p"),
                   reconnect_max=300.0)
        yield until(lambda: self.source.state == "bad token" and self.source.session is None
                    and not self.source.http.busy)
        # The REST seed (401) and the WebSocket (auth_invalid) race; either way the text is our own.
        self.assertIn(self.meter.stats.last_error, ("Home Assistant rejected the access token (auth_invalid)",
                                                    "Home Assistant rejected the access token (HTTP 401)"))
        self.assertNotIn("wrong-token-456", log.text())
        self.assertNotIn("wrong-token-456", self.meter.stats.last_error)

    @inlineCallbacks
    def test_ping_pong_and_reconnect_when_no_pong(self) -> Any:
        clock = Clock()
        meter_clock = Clock()
        self.fake.set_state("sensor.p", "100", W)
        self.start(clock=clock, meter_clock=meter_clock, entities=Entities(power="sensor.p"),
                   ping_interval=20.0, ping_timeout=10.0, reconnect_min=2.0)
        yield next_reading(self.meter)
        yield self.connected()
        # a steady value stays fresh while pongs arrive (design.md §4)
        for _ in range(5):
            meter_clock.advance(20)
            start = len(self.fake.received)
            clock.advance(20)
            ping = yield self.fake.wait_type("ping", start)
            yield until(lambda: self.source.session.ping_id is None)
            self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        self.assertGreater(ping["id"], 1)
        # HA stops answering: no pong within ping_timeout → drop, back off, reconnect, resubscribe
        self.fake.answer_pings = False
        first = self.fake.connections[0]
        start = len(self.fake.received)
        clock.advance(20)
        yield self.fake.wait_type("ping", start)
        clock.advance(10)
        yield first.closed
        yield until(lambda: self.source.state == "disconnected")
        self.assertEqual(self.meter.stats.last_error, "Home Assistant connection lost: no pong within 10 s")
        self.assertIsNot(self.meter.freshness(), Freshness.DOWN)  # soft: decays to stale
        meter_clock.advance(61)
        self.assertEqual(self.meter.freshness(), Freshness.STALE)
        self.fake.answer_pings = True
        start = len(self.fake.received)
        clock.advance(2.0)
        sub = yield self.subscribed(start)
        yield self.connected()
        new_ids = [m["id"] for m in self.fake.received[start:] if "id" in m]
        self.assertEqual(new_ids, sorted(set(new_ids)))
        self.assertEqual(new_ids[0], 1)  # fresh ids on the new connection
        self.assertEqual(sub["entity_ids"], ["sensor.p"])
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)  # alive again, same value

    @inlineCallbacks
    def test_disconnect_backoff_and_resync(self) -> Any:
        clock = Clock()
        self.fake.set_state("sensor.p", "100", W)
        self.start(clock=clock, entities=Entities(power="sensor.p"), reconnect_min=1.0, reconnect_max=4.0)
        yield next_reading(self.meter)
        yield self.connected()
        port = self.fake.port
        number = port.getHost().port
        yield self.fake.drop_connections()
        yield port.stopListening()  # HA is gone for a while
        yield until(lambda: self.source.state == "disconnected")
        failures = self.meter.stats.failures
        delays = []
        for _ in range(4):
            call = clock.getDelayedCalls()[0]
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
            yield until(lambda n=failures: self.meter.stats.failures > n)
            failures = self.meter.stats.failures
            self.assertIn("cannot connect to Home Assistant", self.meter.stats.last_error)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 4.0])
        # back, with a value that changed meanwhile: the snapshot brings it
        self.fake.set_state("sensor.p", "300", W)
        self.fake.port = reactor.listenTCP(number, self.fake.site, interface="127.0.0.1")
        d = next_reading(self.meter, lambda r: r.total_act_power == 300.0)
        clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
        yield d
        yield self.connected()
        self.assertEqual(self.source.attempts, 0)

    @inlineCallbacks
    def test_stop_while_connecting_is_clean(self) -> Any:
        self.start(entities=Entities(power="sensor.p"))
        yield self.source.stopService()
        self.assertEqual(self.source.state, "stopped")
        self.start(entities=Entities(power="sensor.p"))
        yield self.fake.wait_type("auth")
        yield self.source.stopService()
        yield until(lambda: not self.fake.connections)

    @inlineCallbacks
    def test_garbage_frames_are_ignored(self) -> Any:
        self.fake.set_state("sensor.p", "100", W)
        self.start(entities=Entities(power="sensor.p"))
        yield next_reading(self.meter)
        yield self.connected()
        sub = self.source.session.subscription
        self.fake.raw(b"not json")
        self.fake.raw([1, 2])
        self.fake.raw({"id": sub + 100, "type": "event", "event": {"a": {"sensor.p": {"s": "9"}}}})
        d = next_reading(self.meter)
        self.fake.set_state("sensor.p", "200", W)
        reading = yield d
        self.assertEqual(reading.total_act_power, 200.0)


class DiscoveryIOTests(SourceTestBase):
    @inlineCallbacks
    def test_energy_prefs_first(self) -> Any:
        self.fake.prefs = {"energy_sources": [{"type": "grid", "stat_energy_from": "sensor.imp",
                                               "stat_energy_to": "sensor.exp",
                                               "power_config": {"stat_rate_inverted": "sensor.meter"}}],
                           "device_consumption": [{"stat_consumption": "sensor.hp_e", "stat_rate": "sensor.hp",
                                                   "name": "Heat pump"}]}
        self.fake.set_state("sensor.meter", "500", W)
        self.fake.set_state("sensor.imp", "10", DSMR_ENERGY)
        self.fake.set_state("sensor.exp", "2", DSMR_ENERGY)
        self.fake.set_state("sensor.hp", "250", W)
        self.fake.set_state("sensor.p1_meter_power", "1", HOMEWIZARD_POWER)  # not chosen: prefs win
        log = LogCapture(self)
        self.start()
        reading = yield next_reading(self.meter)
        self.assertEqual(reading.total_act_power, -500.0)
        self.assertEqual(reading.energy[0], (10000.0, 2000.0))
        self.assertEqual(dict(reading.extras), {"circuit.heat_pump": 250.0})
        mapping = self.meter.details["mapping"]
        self.assertEqual(mapping, {"origin": "energy_prefs", "invert": True,
                                   "entities": {"power": "sensor.meter", "energy_import": "sensor.imp",
                                                "energy_export": "sensor.exp"},
                                   "circuits": {"heat_pump": "sensor.hp"}})
        sub = yield self.subscribed()
        self.assertEqual(sorted(sub["entity_ids"]), ["sensor.exp", "sensor.hp", "sensor.imp", "sensor.meter"])
        self.assertIn('"origin": "energy_prefs"', log.text())

    @inlineCallbacks
    def test_heuristics_without_prefs(self) -> Any:
        for obj in DSMR_STATES:
            self.fake.set_state(obj["entity_id"], obj["state"], obj["attributes"])
        self.start()
        reading = yield next_reading(self.meter)
        self.assertEqual(reading.total_act_power, 244.0)
        self.assertAlmostEqual(reading.energy[0][0], 6825.0)
        self.assertEqual(self.meter.details["mapping"]["origin"], "heuristics")
        self.assertEqual(reading.extras["circuit.hvac"], 800.0)

    @inlineCallbacks
    def test_nothing_to_find_is_down(self) -> Any:
        clock = Clock()
        self.fake.set_state("light.kitchen", "on", {})
        self.start(clock=clock, reconnect_max=120.0)
        yield self.fake.wait_type("get_states")
        yield until(lambda: self.meter.freshness() is Freshness.DOWN and self.source.session is None)
        self.assertIn("found no grid power sensor", self.meter.down_reason)
        self.assertEqual(self.source.state, "no power sensor")
        self.assertEqual([c.getTime() - clock.seconds() for c in clock.getDelayedCalls()], [120.0])
        # the next look finds one
        self.fake.set_state("sensor.grid_power", "70", W)
        start = len(self.fake.received)
        clock.advance(120.0)
        yield self.subscribed(start)
        yield until(lambda: self.meter.freshness() is Freshness.FRESH)
        self.assertEqual(self.meter.latest.total_act_power, 70.0)

    @inlineCallbacks
    def test_configured_entities_with_auto_circuits(self) -> Any:
        self.fake.set_state("sensor.p", "1000", W)
        self.fake.set_state("sensor.power_hvac", "250", W)
        self.start(entities=Entities(power="sensor.p"), circuits="auto")
        reading = yield next_reading(self.meter, lambda r: "circuit.hvac" in r.extras)
        self.assertEqual(reading.extras["circuit_share.hvac"], 0.25)


class PollTests(SourceTestBase):
    @inlineCallbacks
    def test_poll_mode(self) -> Any:
        clock, meter_clock = Clock(), Clock()
        self.fake.set_state("sensor.p", "100", W)
        self.start(clock=clock, meter_clock=meter_clock, mode="poll", interval=2.0,
                   entities=Entities(power="sensor.p"))
        reading = yield next_reading(self.meter)
        self.assertEqual(reading.total_act_power, 100.0)
        self.assertEqual(self.fake.connections, [])  # no WebSocket in poll mode
        delay = yield self.next_poll(clock)
        self.assertEqual(delay, 2.0)
        d = next_reading(self.meter)
        self.fake.set_state("sensor.p", "0.3", {**W, "unit_of_measurement": "kW"})
        clock.advance(delay)
        reading = yield d
        self.assertEqual(reading.total_act_power, 300.0)
        # a steady value: every successful poll is a heartbeat
        for _ in range(40):
            delay = yield self.next_poll(clock)
            meter_clock.advance(delay)
            clock.advance(delay)
        yield self.next_poll(clock)
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        self.assertEqual(self.meter.latest.total_act_power, 300.0)
        # a rejected token: down, then one poll per reconnect_max only
        self.fake.reject_auth = True
        count = len(self.fake.rest_requests)
        clock.advance(2.0)
        delay = yield self.next_poll(clock)
        self.assertEqual(self.source.state, "bad token")
        self.assertEqual(self.meter.freshness(), Freshness.DOWN)
        self.assertIn("rejected the access token (HTTP 401)", self.meter.down_reason)
        self.assertEqual(delay, 60.0)
        self.assertEqual(len(self.fake.rest_requests), count + 1)

    def next_poll(self, clock: Clock) -> Deferred[float]:
        """Waits until the current poll is over; → the delay to the next one."""
        source = self.source
        d = until(lambda: source._timer is not None and source._timer.active() and not source.http.busy)
        return d.addCallback(lambda _: source._timer.getTime() - clock.seconds())

    @inlineCallbacks
    def test_poll_discovery_uses_rest_states(self) -> Any:
        self.fake.set_state("sensor.p1_meter_power", "-75", HOMEWIZARD_POWER)
        self.start(mode="poll", interval=30.0)
        reading = yield next_reading(self.meter)
        self.assertEqual(reading.total_act_power, -75.0)
        self.assertIn("/api/states", self.fake.rest_requests)
        self.assertEqual(self.meter.details["mapping"]["entities"], {"power": "sensor.p1_meter_power"})


class AppTests(TestCase):
    """The whole gateway: fake HA → meteremu → a battery polling over UDP."""

    timeout = 30
    skip = asyncio_reactor_skip()

    @inlineCallbacks
    def test_state_change_is_served_over_udp_and_secrets_stay_hidden(self) -> Any:
        log = LogCapture(self)
        fake = FakeHomeAssistant(token="TOPSECRET-abc.def")
        fake.listen()
        self.addCleanup(fake.stop)
        fake.set_state("sensor.p1_meter_power", "512", HOMEWIZARD_POWER)
        ports = free_udp_ports(1)
        config = test_config(self.mktemp(), meters={"grid": {"source": {
            "type": "homeassistant", "url": fake.url, "token": "${HA_TOKEN:-TOPSECRET-abc.def}"}}},
            devices=[{"type": "shelly_pro_3em", "udp_ports": ports}])
        app = yield start_app(self, config)
        meter = app.meters["grid"]
        if meter.latest is None:
            yield next_reading(meter)
        yield fake.wait_type("subscribe_entities")
        battery = Battery()
        port = reactor.listenUDP(0, battery, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        raw = yield battery.ask(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', ports[0])
        self.assertEqual(json.loads(raw)["result"]["a_act_power"], 512.0)
        d = next_reading(meter)
        fake.set_state("sensor.p1_meter_power", "-1234.5")
        yield d
        raw = yield battery.ask(b'{"id":2,"method":"EM.GetStatus","params":{"id":0}}', ports[0])
        result = json.loads(raw)["result"]
        self.assertEqual((result["a_act_power"], result["b_act_power"], result["total_act_power"]),
                         (-1234.5, 0.0, -1234.5))
        # /healthz and /metrics: the source is visible, the token is not
        http = HTTPClient(self)
        base = f"http://127.0.0.1:{app.http_port()}"
        response, body = yield http.get(base + "/healthz")
        health = json.loads(body)["meters"]["grid"]
        self.assertEqual((health["source"], health["state"]), ("homeassistant", "fresh"))
        self.assertEqual(health["details"]["mapping"]["entities"], {"power": "sensor.p1_meter_power"})
        self.assertEqual(health["details"]["connection"], "connected")
        _, metrics = yield http.get(base + "/metrics")
        self.assertIn(b'meteremu_source_polls_total{meter="grid",result="ok"}', metrics)
        # a bad token later (HA restarted with the token revoked) is shown without the token
        fake.reject_auth = True
        yield fake.drop_connections()
        yield until(lambda: meter.freshness() is Freshness.DOWN)
        response, body = yield http.get(base + "/healthz")
        self.assertIn(b"rejected the access token", body)
        for text in (body, metrics, log.text().encode(), json.dumps(meter.details).encode(),
                     repr(config).encode()):
            self.assertNotIn(b"TOPSECRET", text)
