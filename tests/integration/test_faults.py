"""Upstream faults (issue item 9): every network source inside a real meteremu.

Each test starts the whole app (``start_app``) with one meter fed by the real
source and two emulated Pro 3EMs on UDP: one with ``on_stale: error`` (the
default), one with ``on_stale: {fallback: -300}``. A fake upstream (the fakes
of ``tests/support`` behind the fault gate of ``tests/support/faults.py``)
then **hangs** (accepts, never answers), **closes mid-body**, answers
**garbage**, **401**, **500**, answers **slowly** (under and over the
source's timeout) or **vanishes** (port closed), and finally comes back with
a *changed* value.

Properties checked in every scenario:

* the Meter goes ``stale``/``down`` per policy within the source's timeout
  plus ``stale_after`` (plus 1.5 s of slack for the next poll);
* while it is not fresh the ``error`` device stays silent on UDP
  ``EM.GetStatus``, HTTP ``/rpc/EM.GetStatus`` answers 503 with -114, and the
  ``fallback`` device serves -300 W — **never a 0.0 W reading**: every
  ``EM.GetStatus`` reply seen during the whole test carries a non-zero,
  non-null total;
* the device transports keep answering: a background battery sends
  ``Sys.GetStatus`` every 50 ms for the whole test (hang included) and every
  reply must come back within 500 ms. The latency goal is p99 < 2 ms on a
  quiet machine (measured in bench/); 500 ms is the generous bound for a
  loaded 2-core CI runner (258 ms was once seen under load) that still proves
  "not blocked": a reactor stalled by a hung upstream would miss it by the
  whole source timeout (≥ 1 s);
* the source recovers **by itself** (no restart): fresh again, and the value
  served over UDP is the upstream's new one.

Timeouts and intervals are shortened through each source's own options
(timeout 1 s, poll interval 0.5 s, small backoff), so a scenario takes a few
seconds. Every wait is bounded (:func:`tests.support.faults.wait_until`).
Tests named ``test_bug_*`` pin product bugs; they fail until it is fixed.
"""

from __future__ import annotations

import copy
import gc
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness
from meteremu.sources.envoy import parse as envoy_parse
from tests.support import HTTPClient, start_app, test_config
from tests.support.fake_envoy import FakeEnvoy, fixture_path, make_jwt
from tests.support.fake_homeassistant import FakeHomeAssistant
from tests.support.fake_homewizard import TOKEN, Certificates, FakeHomeWizard
from tests.support.faults import (
    FaultyResource,
    Plan,
    SlowPongProtocol,
    TelegramStream,
    UdpProber,
    free_tcp_port,
    wait_until,
    wrap_site,
)
from tests.support.p1 import dsmr_fixture, retime
from tests.support.udp import free_udp_ports

log = Logger(namespace="meteremu.tests.faults")

BOUND = 0.5  # s, every UDP reply (see the module docstring)
NO_REPLY_WAIT = 0.4  # s, "no reply" = none within this (longer than BOUND)
FALLBACK = -300.0
SLACK = 1.5  # s, on top of timeout + stale_after: the next poll / reconnect attempt
STATES = {Freshness.STALE, Freshness.DOWN}


class FaultCase(TestCase):
    """One app, one meter, two devices, a background battery (see the module docstring)."""

    timeout = 60

    @inlineCallbacks
    def start_meteremu(self, source: dict[str, Any], stale_after: float) -> Any:
        self.stale_after = stale_after
        self.udp_error, self.udp_fallback = free_udp_ports(2)
        devices = [
            {"type": "shelly_pro_3em", "mac": "AABBCCDDEE01", "udp_ports": [self.udp_error]},
            {"type": "shelly_pro_3em", "mac": "AABBCCDDEE02", "udp_ports": [self.udp_fallback],
             "http_port": free_tcp_port(), "websocket": False, "on_stale": {"fallback": FALLBACK}},
        ]
        config = test_config(self.mktemp(), meters={"grid": {"source": source,
                                                             "stale_after": f"{stale_after * 1000:g}ms"}},
                             devices=devices)
        self.app = yield start_app(self, config)
        self.meter = self.app.meters["grid"]
        self.source = self.app.sources["grid"]
        self.new_readings = 0
        self.meter.add_listener(self._count)
        self.prober = UdpProber()
        listening = reactor.listenUDP(0, self.prober, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.prober.start(self.udp_error, (self.udp_error, self.udp_fallback))
        self.addCleanup(self.prober.stop)
        self.http = HTTPClient(self)

    def _count(self, meter: Any, reading: Any) -> None:
        self.new_readings += 1

    # -- state -------------------------------------------------------------------------
    def describe(self) -> str:
        m = self.meter
        latest = m.latest.total_act_power if m.latest is not None else None
        return (f"meter {m.freshness().value} (down_reason={m.down_reason!r}, last_error="
                f"{m.stats.last_error!r}, failures={m.stats.failures}, total={latest}, "
                f"new readings={self.new_readings})")

    def total(self) -> float | None:
        return self.meter.latest.total_act_power if self.meter.latest is not None else None

    def wait_fresh(self, total: float | None = None, timeout: float = 8.0) -> Deferred[float]:
        """Fresh (and serving ``total`` W, when given)."""
        def ok() -> bool:
            if self.meter.freshness() is not Freshness.FRESH:
                return False
            return total is None or (self.total() is not None and abs(self.total() - total) < 0.01)

        want = "fresh" + (f" with total {total} W" if total is not None else "")
        return wait_until(ok, timeout, lambda: f"{want}; {self.describe()}")

    @inlineCallbacks
    def wait_not_fresh(self, bound: float, states: set[Freshness] = STATES) -> Any:
        """Stale/down within ``bound`` seconds; returns how long it took."""
        names = "/".join(sorted(s.value for s in states))
        took = yield wait_until(lambda: self.meter.freshness() in states, bound + 5.0,
                                lambda: f"{names}; {self.describe()}")
        self.assertLessEqual(took, bound, f"{names} only after {took:.2f} s (bound {bound:.2f} s); "
                                          f"{self.describe()}")
        return took

    @inlineCallbacks
    def wait_fresh_while(self, count: int, timeout: float = 10.0) -> Any:
        """``count`` more new readings, the Meter fresh at every 20 ms sample meanwhile."""
        seen: set[Freshness] = set()
        start = self.new_readings

        def ok() -> bool:
            seen.add(self.meter.freshness())
            return self.new_readings >= start + count

        yield wait_until(ok, timeout, lambda: f"{count} new readings; {self.describe()}")
        self.assertEqual(seen, {Freshness.FRESH}, f"left fresh meanwhile: {self.describe()}")

    # -- what the devices serve -------------------------------------------------------------
    @inlineCallbacks
    def assert_not_served(self) -> Any:
        """Stale/down: no UDP reply (error), 503/-114 over HTTP, the fallback watts, Sys answers."""
        self.assertIn(self.meter.freshness(), STATES, self.describe())
        em, fallback, sys_reply, (response, body) = yield gatherResults([
            self.prober.ask("EM.GetStatus", self.udp_error, NO_REPLY_WAIT),
            self.prober.ask("EM.GetStatus", self.udp_fallback, NO_REPLY_WAIT),
            self.prober.ask("Sys.GetStatus", self.udp_error, NO_REPLY_WAIT),
            self.http.get(f"http://127.0.0.1:{self.app.http_port()}/rpc/EM.GetStatus?id=0"),
        ])
        self.assertIsNone(em, f"the on_stale: error device answered EM.GetStatus while "
                              f"{self.meter.freshness().value}: {em}")
        self.assertEqual(response.code, 503, body)
        self.assertEqual(json.loads(body)["code"], -114, body)
        self.assertIsNotNone(fallback, "the fallback device did not answer EM.GetStatus")
        self.assertEqual((fallback["result"]["a_act_power"], fallback["result"]["total_act_power"]),
                         (FALLBACK, FALLBACK), fallback)
        self.assertIsNotNone(sys_reply, "Sys.GetStatus got no reply while the upstream is broken")

    @inlineCallbacks
    def assert_served(self, total: float) -> Any:
        """Fresh: both devices serve ``total`` over UDP."""
        for port in (self.udp_error, self.udp_fallback):
            reply = yield self.prober.ask("EM.GetStatus", port, 2.0)
            self.assertIsNotNone(reply, f"no EM.GetStatus reply from port {port}; {self.describe()}")
            self.assertApproximates(reply["result"]["total_act_power"], total, 0.01, msg=reply)

    def check_transports(self) -> None:
        """Every UDP reply within BOUND, every Sys.GetStatus answered, never 0 W served."""
        prober = self.prober
        self.assertGreater(prober.background_sent, 0)
        lost = prober.unanswered("Sys.GetStatus", BOUND)
        self.assertEqual(lost, [], f"{len(lost)} Sys.GetStatus probes without a reply after {BOUND} s "
                                   f"(of {prober.background_sent})")
        slow = [(m, p, round(rtt * 1000, 1)) for m, p, rtt in prober.rtts if rtt >= BOUND]
        self.assertEqual(slow, [], f"UDP replies slower than {BOUND * 1000:g} ms (method, port, ms)")
        for port, result in prober.em_results:
            total = result.get("total_act_power")
            self.assertIsInstance(total, float, result)
            self.assertNotEqual(total, 0.0, f"0 W served on port {port}: {result}")
            self.assertIsInstance(result.get("a_act_power"), float, result)

    # -- the common scenario ------------------------------------------------------------------
    @inlineCallbacks
    def outage(self, inject: Callable[[], Any], restore: Callable[[], Any], bound: float,
               new_total: float, change: Callable[[], Any], states: set[Freshness] = STATES,
               reason: str | tuple[str, ...] | None = None) -> Any:
        """Fresh → fault (+ upstream value changes) → stale/down within ``bound`` →
        not served → upstream back → fresh with the new value, no restart."""
        yield self.wait_fresh()
        yield inject()
        change()
        took = yield self.wait_not_fresh(bound, states)
        log.info("fault: {test}: {state} after {took:.2f} s (bound {bound:.2f} s)",
                 test=self.id().rsplit(".", 2)[-2:], state=self.describe(), took=took, bound=bound)
        if reason is not None:
            reasons = (reason,) if isinstance(reason, str) else reason
            # Stale (judged on arrival) can come a moment before the request's own
            # timeout is counted as a failure: wait for the reason, within the bound.
            yield wait_until(lambda: any(r in (self.meter.stats.last_error or "") for r in reasons),
                             bound, lambda: f"one of {reasons}; {self.describe()}")
            self.assertTrue(any(r in (self.meter.stats.last_error or "") for r in reasons),
                            f"expected one of {reasons}; {self.describe()}")
        yield self.assert_not_served()
        yield restore()
        yield self.wait_fresh(new_total)
        yield self.assert_served(new_total)
        self.check_transports()


# =====================================================================================
# Envoy (HTTPS + token, the real EnvoySource)
# =====================================================================================

ENVOY_FOLDER = "8.3.5167_3rd-pv"
ENVOY_TIMEOUT = 1.0
ENVOY_STALE = 2.0


def _envoy_readings(scale: float) -> tuple[Any, float]:
    with open(fixture_path(ENVOY_FOLDER, "ivp_meters_readings"), encoding="utf-8") as handle:
        data = json.load(handle)
    with open(fixture_path(ENVOY_FOLDER, "ivp_meters"), encoding="utf-8") as handle:
        meters = envoy_parse.parse_meters(json.load(handle))
    for meter in data:
        meter["activePower"] = round(meter["activePower"] * scale, 3)
        for channel in meter.get("channels", []):
            channel["activePower"] = round(channel["activePower"] * scale, 3)
    sample = envoy_parse.grid_from_readings(envoy_parse.parse_readings(data, meters))
    return data, sum(sample.powers())


class EnvoyFaultTests(FaultCase):
    @inlineCallbacks
    def start(self) -> Any:
        self.envoy = FakeEnvoy(ENVOY_FOLDER)
        self.envoy.start()
        self.addCleanup(self.envoy.stop)
        self.plan = Plan()
        self.addCleanup(self.plan.cleanup)
        self._gate()
        token = make_jwt(self.envoy.info.serial)
        self.envoy.state.valid_tokens.add(token)
        yield self.start_meteremu({
            "type": "envoy", "url": self.envoy.url, "token": token,
            "tls_fingerprint": self.envoy.fingerprint, "interval": "500ms",
            "timeout": f"{ENVOY_TIMEOUT * 1000:g}ms", "backoff_max": "500ms", "totals_interval": "1h"},
            ENVOY_STALE)
        self.changed, self.new_total = _envoy_readings(0.5)

    def _gate(self) -> None:
        assert self.envoy.listener is not None
        self.envoy.listener.site.resource = FaultyResource(self.envoy, self.plan)

    def change(self) -> None:
        self.envoy.data["/ivp/meters/readings"] = copy.deepcopy(self.changed)

    def bound(self, extra: float = 0.0) -> float:
        return ENVOY_TIMEOUT + ENVOY_STALE + SLACK + extra

    @inlineCallbacks
    def fault(self, mode: str, reason: str, **kw: Any) -> Any:
        yield self.start()
        yield self.outage(lambda: self.plan.set(mode, **kw), self.plan.clear, self.bound(kw.get("delay", 0.0)),
                          self.new_total, self.change, {Freshness.DOWN}, reason)

    def test_hang(self) -> Any:
        return self.fault("hang", "the Envoy did not answer")

    def test_closes_mid_body(self) -> Any:
        return self.fault("midbody", "the Envoy did not answer: answer cut off")

    def test_garbage(self) -> Any:
        return self.fault("garbage", "unexpected answer from the Envoy")

    def test_garbage_json_of_another_shape(self) -> Any:
        return self.fault("garbage", "unexpected answer from the Envoy", body=b'{"error": "busy"}',
                          paths=("/ivp/meters/readings",))

    def test_401_on_the_data_endpoint(self) -> Any:
        # /auth/check_jwt still accepts the token: one re-authentication, then down.
        return self.fault("status", "authentication failed", status=401, paths=("/ivp/meters/readings",))

    def test_500(self) -> Any:
        return self.fault("status", "HTTP 500", status=500)

    def test_slow_over_the_timeout(self) -> Any:
        return self.fault("slow", "the Envoy did not answer", delay=ENVOY_TIMEOUT + 0.5)

    @inlineCallbacks
    def test_slow_under_the_timeout_stays_fresh(self) -> Any:
        yield self.start()
        yield self.wait_fresh()
        self.plan.set("slow", delay=ENVOY_TIMEOUT * 0.3)
        self.change()
        yield self.wait_fresh_while(4)
        self.assertGreater(self.plan.faulted, 4)
        yield self.wait_fresh(self.new_total)
        yield self.assert_served(self.new_total)
        self.check_transports()

    @inlineCallbacks
    def test_vanishes_and_returns(self) -> Any:
        yield self.start()
        port = self.envoy.listener.number

        def back() -> None:
            self.envoy.start(port)
            self._gate()

        yield self.outage(self.envoy.stop, back, self.bound(), self.new_total, self.change,
                          {Freshness.DOWN}, "the Envoy did not answer")


# =====================================================================================
# Home Assistant (WebSocket subscribe_entities + REST seed, the real source)
# =====================================================================================

HA_ENTITY = "sensor.grid_power"
HA_ATTRS = {"unit_of_measurement": "W", "device_class": "power", "state_class": "measurement"}
HA_TIMEOUT = 1.0
HA_PING = 0.3
HA_PONG = 0.5
HA_STALE = 1.5


class HomeAssistantFaultTests(FaultCase):
    """A push source: a lost connection is a *soft* failure (stale after stale_after),
    a rejected token is ``down`` (client.py's docstring)."""

    @inlineCallbacks
    def start(self) -> Any:
        self.fake = FakeHomeAssistant()
        self.fake.factory.protocol = SlowPongProtocol
        self.fake.set_state(HA_ENTITY, "1234.5", HA_ATTRS)
        self.fake.listen()
        self.number = self.fake.port.getHost().port
        self.plan, self.tracker = wrap_site(self.fake.site)
        self.addCleanup(self.tracker.abort_all)
        self.addCleanup(self.fake.stop)
        self.addCleanup(self.plan.cleanup)
        yield self.start_meteremu({
            "type": "homeassistant", "url": self.fake.url, "token": self.fake.token,
            "entities": {"power": HA_ENTITY}, "timeout": f"{HA_TIMEOUT * 1000:g}ms",
            "ping_interval": f"{HA_PING * 1000:g}ms", "ping_timeout": f"{HA_PONG * 1000:g}ms",
            "reconnect_min": "100ms", "reconnect_max": "500ms"}, HA_STALE)
        yield self.wait_fresh(1234.5)
        yield self.wait_subscribed()

    def wait_subscribed(self) -> Deferred[float]:
        return wait_until(lambda: self.source.state == "connected" and bool(self.fake.connections)
                          and bool(self.fake.connections[0].subscriptions), 5.0,
                          lambda: f"a subscription; {self.describe()}")

    def change(self) -> None:
        self.fake.set_state(HA_ENTITY, "2345.5", HA_ATTRS)

    def bound(self) -> float:
        return HA_PING + HA_PONG + HA_STALE + SLACK

    def subscription(self) -> int:
        conn = self.fake.connections[0]
        return next(iter(conn.subscriptions))

    @inlineCallbacks
    def test_hang(self) -> Any:
        yield self.start()

        def hang() -> None:
            self.plan.set("hang")  # new connections: the upgrade is never answered
            self.fake.answer_pings = False  # the open one: silence

        def back() -> None:
            self.fake.answer_pings = True
            self.plan.clear()

        yield self.outage(hang, back, self.bound(), 2345.5, self.change,
                          reason="Home Assistant connection lost")

    @inlineCallbacks
    def test_vanishes_and_returns(self) -> Any:
        yield self.start()

        def vanish() -> Deferred[Any]:
            d = self.tracker.abort_all()
            return d.addCallback(lambda _: self.fake.stop())

        def back() -> None:
            self.fake.port = reactor.listenTCP(self.number, self.fake.site, interface="127.0.0.1")

        yield self.outage(vanish, back, HA_STALE + SLACK, 2345.5, self.change)

    @inlineCallbacks
    def test_500_on_the_websocket_upgrade_and_rest(self) -> Any:
        yield self.start()

        def fail() -> Deferred[Any]:
            self.plan.set("status", status=500)
            return self.fake.drop_connections()

        yield self.outage(fail, self.plan.clear, HA_STALE + SLACK, 2345.5, self.change)

    @inlineCallbacks
    def test_garbage_on_the_websocket_upgrade(self) -> Any:
        yield self.start()

        def fail() -> Deferred[Any]:
            self.plan.set("garbage")
            return self.fake.drop_connections()

        yield self.outage(fail, self.plan.clear, HA_STALE + SLACK, 2345.5, self.change)

    @inlineCallbacks
    def test_401_bad_token_is_down(self) -> Any:
        yield self.start()

        def reject() -> Deferred[Any]:
            self.fake.reject_auth = True
            return self.fake.drop_connections()

        def back() -> None:
            self.fake.reject_auth = False

        yield self.outage(reject, back, HA_TIMEOUT + SLACK, 2345.5, self.change, {Freshness.DOWN},
                          "rejected the access token")

    @inlineCallbacks
    def test_closes_mid_frame(self) -> Any:
        """The connection drops inside a WebSocket frame: reconnect at once, new value served."""
        yield self.start()
        before = self.source.connections
        conn = self.fake.connections[0]
        # A text frame announcing 256 bytes, 9 of them sent, then the TCP close.
        conn.transport.write(b"\x81\x7e\x01\x00" + b'{"id": 1,')
        conn.transport.loseConnection()
        self.change()
        yield wait_until(lambda: self.source.connections > before, 5.0,
                         lambda: f"a new subscription; {self.describe()}")
        self.assertIn("connection lost", self.meter.stats.last_error or "", self.describe())
        yield self.wait_fresh(2345.5)
        yield self.assert_served(2345.5)
        self.check_transports()

    @inlineCallbacks
    def test_garbage_frames_are_ignored(self) -> Any:
        """Frames that are not JSON messages change nothing: same connection, still fresh."""
        yield self.start()
        before = self.source.connections
        sub = self.subscription()
        for frame in (b"not json {", b"[1, 2, 3]", b'"a string"', b"{}",
                      {"type": "event", "id": 9999, "event": {"c": {}}},
                      {"type": "result", "id": "x"}, {"type": "pong", "id": None},
                      {"type": "event", "id": sub, "event": "not an object"},
                      {"type": "event", "id": sub, "event": {"c": {HA_ENTITY: "not a diff"}}}):
            self.fake.raw(frame)
        self.change()
        yield self.wait_fresh(2345.5)
        self.assertEqual(self.source.connections, before, self.describe())
        yield self.assert_served(2345.5)
        self.check_transports()

    @inlineCallbacks
    def test_slow_pongs_under_the_timeout_stay_fresh(self) -> Any:
        yield self.start()
        self.fake.pong_delay = HA_PONG * 0.4
        before = self.source.connections
        seen: set[Freshness] = set()
        pings = sum(1 for m in self.fake.received if isinstance(m, dict) and m.get("type") == "ping")

        def five_more() -> bool:
            seen.add(self.meter.freshness())
            count = sum(1 for m in self.fake.received if isinstance(m, dict) and m.get("type") == "ping")
            return count >= pings + 5

        yield wait_until(five_more, 10.0, lambda: f"five more pings; {self.describe()}")
        self.assertEqual(seen, {Freshness.FRESH}, self.describe())
        self.assertEqual(self.source.connections, before, "reconnected although every pong came in time")
        self.check_transports()

    @inlineCallbacks
    def test_slow_pongs_over_the_timeout_recycle_the_connection(self) -> Any:
        """A pong later than ping_timeout ends the connection ("no pong") and the source
        reconnects by itself; the snapshot of each new subscription keeps values coming."""
        yield self.start()
        before = self.source.connections
        self.fake.pong_delay = HA_PONG * 2
        yield wait_until(lambda: "no pong" in (self.meter.stats.last_error or "")
                         and self.source.connections >= before + 1, 10.0,
                         lambda: f"a 'no pong' reconnect; {self.describe()}")
        self.fake.pong_delay = 0.0
        self.change()
        yield self.wait_fresh(2345.5)
        yield self.assert_served(2345.5)
        self.check_transports()

    @inlineCallbacks
    def test_bug_malformed_events_do_not_kill_the_connection(self) -> Any:
        """``subscribe_entities`` events whose parts have the wrong JSON type.

        ``Tracker.apply_event`` raises TypeError/AttributeError on them; the
        exception escapes ``ws_message`` into autobahn, which logs it and drops
        the connection (and HA would send the same event again after the
        reconnect's snapshot if the bad part is in a state).
        """
        yield self.start()
        before = self.source.connections
        sub = self.subscription()
        bad = [{"a": [HA_ENTITY]}, {"r": 5}, {"a": {HA_ENTITY: {"s": "1", "a": ["unit"]}}},
               {"c": {HA_ENTITY: {"+": {"a": 3}, "-": {"a": 5}}}},
               {"c": {HA_ENTITY: {"+": {"s": "1e400", "lc": 1e12}}}}]
        problems = []
        for i, event in enumerate(bad):
            self.fake.raw({"type": "event", "id": sub, "event": event})
            # A good change after it: processed in order on this connection, or
            # brought by the snapshot of the next one if the bad event killed it.
            marker = 1000.0 + i
            self.fake.set_state(HA_ENTITY, f"{marker}", HA_ATTRS)
            yield self.wait_fresh(marker)
            errors = self.flushLoggedErrors()
            if errors or self.source.connections != before:
                problems.append(f"{json.dumps(event)[:90]} -> "
                                + ", ".join(f"{e.type.__name__}: {str(e.value)[:60]}" for e in errors))
                yield self.wait_subscribed()
                before = self.source.connections
                sub = self.subscription()
        self.assertEqual(problems, [], "PRODUCT BUG: malformed subscribe_entities events escape "
                                       "meteremu/sources/homeassistant/protocol.py apply_event/merge_diff/"
                                       "convert into autobahn (logged error, connection dropped): "
                                       + "; ".join(problems) + " — check the type of event['a'|'c'|'r'], "
                                       "of each diff's '+'/'-' and of 'a', and catch OverflowError in "
                                       "convert (a state beyond float range is a SampleError)")


# =====================================================================================
# HomeWizard P1 (v1: HTTP poll; v2: HTTPS + token poll)
# =====================================================================================

HW_TIMEOUT = 1.0
HW_STALE = 1.5
HW_NEW = {"active_power_w": -1000, "active_power_l1_w": -1133,  # v1 keys
          "power_w": -1000, "power_l1_w": -1133}  # v2 keys
HW_NEW_TOTAL = -1133.0 + 133.0 + 0.0


class _HomeWizardScenarios:
    """Poll failures are soft (stale after stale_after), three in a row or a
    refused token mark the meter down (homewizard/source.py's docstring). Shared by
    the v1 (HTTP) and v2 (HTTPS + token) classes below."""

    api = "v1"

    @inlineCallbacks
    def start(self, **extra: Any) -> Any:
        certs = Certificates(self.mktemp()) if self.api == "v2" else None
        self.certs = certs
        self.fake = FakeHomeWizard(self, self.api, certs)
        self.site = getattr(self.fake.port.factory, "wrappedFactory", self.fake.port.factory)
        self.number = self.fake.port.getHost().port
        self.plan, self.tracker = wrap_site(self.site)
        self.addCleanup(self.tracker.abort_all)
        self.addCleanup(self.plan.cleanup)
        options: dict[str, Any] = {"type": "homewizard", "host": self.fake.host, "interval": "500ms",
                                   "timeout": f"{HW_TIMEOUT * 1000:g}ms", "reconnect_min": "100ms",
                                   "reconnect_max": "500ms"}
        if self.api == "v2":
            options.update({"api": "v2", "mode": "poll", "token": TOKEN, "timestamps": "arrival",
                            "tls_fingerprint": certs.fingerprint})
        options.update(extra)
        yield self.start_meteremu(options, HW_STALE)

    def change(self) -> None:
        self.fake.body = {**self.fake.body, **{k: v for k, v in HW_NEW.items() if k in self.fake.body}}

    def bound(self, extra: float = 0.0) -> float:
        return HW_TIMEOUT + HW_STALE + SLACK + extra

    def listen(self) -> None:
        if self.api == "v2":
            self.fake.port = reactor.listenSSL(self.number, self.site, self.certs.server_options(),
                                               interface="127.0.0.1")
        else:
            self.fake.port = reactor.listenTCP(self.number, self.site, interface="127.0.0.1")

    @inlineCallbacks
    def fault(self, mode: str, states: set[Freshness] = STATES, reason: str | None = None, **kw: Any) -> Any:
        yield self.start()
        yield self.outage(lambda: self.plan.set(mode, **kw), self.plan.clear, self.bound(kw.get("delay", 0.0)),
                          HW_NEW_TOTAL, self.change, states, reason)

    def test_hang(self) -> Any:
        return self.fault("hang", reason="timed out")

    def test_closes_mid_body(self) -> Any:
        return self.fault("midbody", reason="HomeWizard poll failed: answer cut off")

    def test_garbage(self) -> Any:
        return self.fault("garbage", reason="HomeWizard poll failed")

    def test_401_is_down_at_once(self) -> Any:
        return self.fault("status", {Freshness.DOWN}, "rejected the token", status=401)

    @inlineCallbacks
    def test_vanishes_and_returns(self) -> Any:
        yield self.start()

        def vanish() -> Deferred[Any]:
            port = self.fake.port
            return self.tracker.abort_all().addCallback(lambda _: port.stopListening())

        yield self.outage(vanish, self.listen, self.bound(), HW_NEW_TOTAL, self.change, STATES,
                          "HomeWizard poll failed")

    @inlineCallbacks
    def test_bug_number_beyond_float_range_stops_the_poll_loop(self) -> Any:
        """A body with a power of 10**400 (valid JSON): ``_number`` raises OverflowError,
        which ``ok()`` does not catch (ValueError only): the poll is never rescheduled."""
        yield self.start()
        yield self.wait_fresh()
        key = "active_power_w" if self.api == "v1" else "power_w"
        self.plan.set("garbage", body=json.dumps({**self.fake.body, key: 10**400}).encode())
        served = self.plan.faulted
        yield wait_until(lambda: self.plan.faulted > served, 5.0, "the body to be served")
        self.plan.clear()
        self.change()
        requests = self.plan.requests
        try:
            yield self.wait_fresh(HW_NEW_TOTAL, timeout=HW_STALE + 4 * HW_TIMEOUT)
            stuck = None
        except Exception:  # noqa: BLE001 - turned into the bug report below
            stuck = self.describe()
        gc.collect()  # the dead poll's Deferred logs its unhandled OverflowError here, not in a later test
        errors = self.flushLoggedErrors()
        if stuck is not None:
            self.fail(f"PRODUCT BUG: after one HomeWizard {self.api} body with {key}: 1e400 (a 401-digit JSON "
                      f"integer) the source never polls again ({self.plan.requests - requests} requests since; "
                      f"{stuck}; logged: {[e.type.__name__ for e in errors]}). meteremu/sources/homewizard/source.py "
                      "_number calls float() on an int beyond float range (OverflowError); _poll's ok() "
                      "catches only ValueError, so the exception ends the callback chain and _schedule is "
                      "never called. Fix: _number returns None unless math.isfinite after a guarded float(); "
                      "and ok() should catch Exception (reschedule on any failure)")
        self.check_transports()



class HomeWizardFaultTests(_HomeWizardScenarios, FaultCase):
    """API v1 over HTTP; the scenarios whose code path is the same for v2 run here only."""

    api = "v1"

    def test_garbage_json_of_another_shape(self) -> Any:
        return self.fault("garbage", reason="unusable answer", body=b'["not", "an", "object"]')

    def test_500(self) -> Any:
        return self.fault("status", reason="HTTP 500", status=500)

    def test_slow_over_the_timeout(self) -> Any:
        return self.fault("slow", reason="timed out", delay=HW_TIMEOUT + 0.5)

    @inlineCallbacks
    def test_repeated_failures_are_down(self) -> Any:
        """Soft failures first (stale), three in a row: down."""
        yield self.start()
        yield self.outage(lambda: self.plan.set("status", status=500), self.plan.clear,
                          self.bound() + 2 * (HW_TIMEOUT + 0.5), HW_NEW_TOTAL, self.change,
                          {Freshness.DOWN}, "HTTP 500")

    @inlineCallbacks
    def test_slow_under_the_timeout_stays_fresh(self) -> Any:
        yield self.start()
        yield self.wait_fresh()
        self.plan.set("slow", delay=HW_TIMEOUT * 0.3)
        self.change()
        yield self.wait_fresh_while(4)
        yield self.wait_fresh(HW_NEW_TOTAL)
        yield self.assert_served(HW_NEW_TOTAL)
        self.check_transports()


class HomeWizardV2FaultTests(_HomeWizardScenarios, FaultCase):
    api = "v2"

    @inlineCallbacks
    def test_401_is_down_at_once(self) -> Any:
        """The device itself refuses the token (a new pairing made the old one invalid)."""
        yield self.start()

        def revoke() -> None:
            self.fake.token = "F" * 32

        def pair_again() -> None:
            self.fake.token = TOKEN

        yield self.outage(revoke, pair_again, self.bound(), HW_NEW_TOTAL, self.change, {Freshness.DOWN},
                          "rejected the token")

    @inlineCallbacks
    def test_bug_one_future_timestamp_freezes_the_meter(self) -> Any:
        """``timestamps: meter``: one measurement stamped in the future (a device
        clock glitch) makes every later, correct sample "not new" (Meter.update
        ignores measured_at <= the latest): the meter stays stale until that date."""
        yield self.start(timestamps="meter")

        def tick() -> None:
            if self.fake.body.get("timestamp", "").startswith("2099"):
                return
            self.fake.body = {**self.fake.body, "timestamp": datetime.now().replace(microsecond=0).isoformat()}

        clock = LoopingCall(tick)
        clock.start(0.2)
        self.addCleanup(clock.stop)
        yield self.wait_fresh()
        self.fake.body = {**self.fake.body, "timestamp": "2099-01-01T00:00:00"}
        yield wait_until(lambda: self.meter.latest.measured_at > 4e9, 5.0, self.describe)
        self.fake.body = {**self.fake.body, "timestamp": datetime.now().replace(microsecond=0).isoformat()}
        self.change()
        try:
            yield self.wait_fresh(HW_NEW_TOTAL, timeout=3 * HW_STALE + 2)
        except Exception:  # noqa: BLE001 - turned into the bug report below
            self.fail(f"PRODUCT BUG: after one HomeWizard v2 measurement stamped 2099-01-01 the meter never "
                      f"takes a correct sample again ({self.describe()}). meteremu/sources/homewizard/source.py "
                      "parse_measurement/_take hands measured_at to Meter.update, which drops every reading "
                      "not newer than the latest. Fix: as the Envoy client does (_publish), treat a "
                      "timestamp that differs from the last one but is not newer as new (last + 1 ms), or "
                      "use the arrival time when the device's time is ahead of it by more than a few minutes")


# =====================================================================================
# DSMR / P1 over TCP (a ser2net stand-in streaming telegrams)
# =====================================================================================

DSMR_FIXTURE = "v5_iskra_mt382.txt"
DSMR_PERIOD = 0.25
DSMR_IDLE = 1.0
DSMR_STALE = 1.0
DSMR_NEW_TOTAL = 1070.0 + 32.0 + 142.0  # 21.7.0 raised from 0.070 to 1.070 kW


class DsmrFaultTests(FaultCase):
    """Disconnected or silent past idle_timeout: down; bad CRCs are soft failures (source.py)."""

    @inlineCallbacks
    def start(self, **extra: Any) -> Any:
        self.stream = TelegramStream(dsmr_fixture(DSMR_FIXTURE), DSMR_PERIOD)
        self.addCleanup(self.stream.close)
        yield self.start_meteremu({
            "type": "dsmr", "tcp": self.stream.address, "interval": f"{DSMR_PERIOD * 1000:g}ms",
            "idle_timeout": f"{DSMR_IDLE * 1000:g}ms", "connect_timeout": "1s",
            "reconnect_min": "100ms", "reconnect_max": "500ms", **extra}, DSMR_STALE)

    def change(self) -> None:
        self.stream.telegram = self.stream.telegram.replace(b"1-0:21.7.0(00.070*kW)", b"1-0:21.7.0(01.070*kW)")

    def set_mode(self, mode: str) -> Callable[[], None]:
        def apply() -> None:
            self.stream.mode = mode

        return apply

    @inlineCallbacks
    def test_hang(self) -> Any:
        """Connected but silent: stale after stale_after, then down by the idle watchdog."""
        yield self.start()
        yield self.outage(self.set_mode("hang"), self.set_mode("ok"), DSMR_STALE + SLACK, DSMR_NEW_TOTAL,
                          self.change)
        self.assertIn("no valid P1 telegram", self.meter.stats.last_error or "", self.describe())

    @inlineCallbacks
    def test_garbage(self) -> Any:
        """Line noise and telegrams with a wrong CRC only: never served, then down, then back."""
        yield self.start()
        yield self.outage(self.set_mode("garbage"), self.set_mode("ok"), DSMR_IDLE + SLACK, DSMR_NEW_TOTAL,
                          self.change, {Freshness.DOWN})
        self.assertGreater(self.meter.details["crc_errors"], 0)

    @inlineCallbacks
    def test_closes_mid_telegram(self) -> Any:
        yield self.start()
        yield self.wait_fresh()
        self.change()
        self.stream.cut_mid_telegram()
        yield wait_until(lambda: self.stream.connections >= 2 and "P1 connection lost" in
                         (self.meter.stats.last_error or ""), 5.0, self.describe)
        yield self.wait_fresh(DSMR_NEW_TOTAL)
        yield self.assert_served(DSMR_NEW_TOTAL)
        self.check_transports()

    @inlineCallbacks
    def test_vanishes_and_returns(self) -> Any:
        yield self.start()
        # The first reconnect attempt (after 50-100 ms) may already have been refused.
        yield self.outage(self.stream.vanish, self.stream.back, SLACK, DSMR_NEW_TOTAL, self.change,
                          {Freshness.DOWN}, ("P1 connection lost", "connection refused"))

    @inlineCallbacks
    def test_slow_stream(self) -> Any:
        """Telegrams further apart than stale_after: stale between them (never served),
        fresh again with each one; back to the normal rate: fresh throughout."""
        yield self.start(idle_timeout="5s")
        yield self.wait_fresh()
        self.stream.loop.stop()
        self.stream.loop.start(DSMR_STALE * 1.6, now=False)
        yield self.wait_not_fresh(DSMR_STALE * 1.6 + SLACK)
        yield self.assert_not_served()
        self.change()
        yield self.wait_fresh(DSMR_NEW_TOTAL, timeout=DSMR_STALE * 1.6 + 5)
        self.stream.loop.stop()
        self.stream.loop.start(DSMR_PERIOD, now=False)
        yield self.wait_fresh_while(6)
        self.check_transports()

    @inlineCallbacks
    def test_bug_one_future_timestamp_freezes_the_meter(self) -> Any:
        """``timestamps: meter`` (the default): one CRC-valid telegram whose clock says
        2060 (a meter clock glitch) makes every later, correct telegram "not new"."""
        yield self.start()
        yield self.wait_fresh()
        # YYMMDD: dsmr_parser reads "60" as 2060 ("69" and above as 19xx).
        glitch = retime(self.stream.telegram, time.mktime((2060, 1, 1, 0, 0, 0, 0, 0, -1)))
        self.stream.write(glitch)
        yield wait_until(lambda: self.meter.latest.measured_at > time.time() + 10 * 365 * 86400, 5.0,
                         self.describe)
        self.change()
        try:
            yield self.wait_fresh(DSMR_NEW_TOTAL, timeout=3 * DSMR_STALE + 2)
        except Exception:  # noqa: BLE001 - turned into the bug report below
            self.fail(f"PRODUCT BUG: after one P1 telegram stamped 2060 (0-0:1.0.0) the meter never takes "
                      f"a correct telegram again ({self.describe()}): meteremu/sources/dsmr/parse.py "
                      "P1Decoder.decode uses the meter's clock as measured_at and Meter.update drops every "
                      "reading not newer than the latest. Fix: as the Envoy client does (_publish), a "
                      "timestamp that differs from the last one but is not newer counts as new (last + "
                      "1 ms), or fall back to the arrival time when the meter's clock is ahead of it")
