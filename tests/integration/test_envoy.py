"""Tests for meteremu.sources.envoy (specs/envoy.md §8, the issue's conformance list).

* Pure parsers, table-driven from ``tests/fixtures/envoy/derived_expectations.json``
  over every fixture folder (``SynchronousTestCase``).
* Auth helpers: JWT claims and refresh rule, installer password, Digest.
* Scheduling (alignment, backoff with jitter, recovery, one slow task per cycle)
  on a ``task.Clock`` with an in-memory Envoy.
* Real sockets on 127.0.0.1: a fake Envoy over HTTPS (self-signed certificate
  made by the test, pinned by fingerprint) replays every fixture folder; the
  auth flows run against a fake Enlighten/Entrez cloud over verified HTTPS;
  one end-to-end test reads the Envoy's phases over the Shelly UDP transport.

Nothing here contacts any address but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness, Meter
from meteremu.sources.envoy.auth import (
    AuthError,
    Redactor,
    TokenManager,
)
from meteremu.sources.envoy.client import EnvoySource
from meteremu.sources.envoy.options import EnvoyOptions
from tests.support import ROOT, HTTPClient, start_app, test_config
from tests.support.fake_envoy import (
    FakeCloud,
    FakeEnvoy,
    folders,
    make_jwt,
)
from tests.support.shared.envoy import (
    CONSISTENT_READINGS,
    DAY,
    TOL,
    DictStore,
    channel_energy,
    expected_grid,
    livedata_three_phase,
)
from tests.support.udp import Battery, free_udp_ports


class StubCloud:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.calls = 0

    def fetch_token(self, username: str, password: str, serial: str) -> Any:
        self.calls += 1
        if not self.tokens:
            return fail(AuthError("cloud unreachable"))
        return succeed(self.tokens.pop(0))


class TokenManagerTests(TestCase):
    """The token lifecycle on a Clock: cache, renewal ahead of expiry, re-authentication."""

    def manager(self, clock: Clock, cloud: StubCloud | None, store: DictStore, token: str | None = None):
        return TokenManager(static_token=token, username="owner@example.com" if cloud else None,
                            password="pw-123456" if cloud else None, cloud=cloud, store=store,
                            clock=clock, redact=Redactor())

    async def test_cached_token_is_used_and_renewed_in_the_background(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        store = DictStore()
        cached = make_jwt("SN", iat=clock.seconds() - 300 * DAY, lifetime=365 * DAY)  # 65 days left
        store.put("envoy:SN:token", cached)
        renewed = make_jwt("SN", iat=clock.seconds())
        cloud = StubCloud([renewed])
        accepted = {cached, renewed}
        checked: list[str] = []

        async def check(token: str) -> bool:
            checked.append(token)
            return token in accepted

        tokens = self.manager(clock, cloud, store)
        await tokens.acquire("SN", check)
        self.assertEqual((tokens.token, tokens.origin, cloud.calls), (cached, "store", 0))
        tokens.maybe_refresh()
        self.assertEqual(cloud.calls, 0)  # 65 days left: nothing to do
        clock.advance(36 * DAY)  # 29 days left: renew
        tokens.maybe_refresh()
        self.assertEqual(cloud.calls, 1)
        self.assertEqual(tokens.token, cached)  # not before the Envoy accepted it
        self.assertTrue(await tokens.adopt_fresh(check))
        self.assertEqual((tokens.token, store.get("envoy:SN:token")), (renewed, renewed))
        self.assertFalse(await tokens.adopt_fresh(check))

    async def test_failed_renewal_keeps_the_valid_token_and_waits(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        old = make_jwt("SN", iat=clock.seconds() - 340 * DAY, lifetime=365 * DAY)  # 25 days left
        cloud = StubCloud([])
        tokens = self.manager(clock, cloud, DictStore(), token=old)

        async def check(token: str) -> bool:
            return token == old

        await tokens.acquire("SN", check)  # renewal fails at connect: the old one still works
        self.assertEqual((tokens.token, tokens.origin, cloud.calls), (old, "config", 1))
        tokens.maybe_refresh()
        self.assertEqual(cloud.calls, 2)
        tokens.maybe_refresh()
        self.assertEqual(cloud.calls, 2)  # waits before trying again
        clock.advance(3601)
        tokens.maybe_refresh()
        self.assertEqual(cloud.calls, 3)
        self.flushLoggedErrors()

    async def test_expired_cached_token_is_replaced(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        store = DictStore()
        store.put("envoy:SN:token", make_jwt("SN", iat=clock.seconds() - 366 * DAY, lifetime=365 * DAY))
        fresh = make_jwt("SN", iat=clock.seconds())
        cloud = StubCloud([fresh])

        async def check(token: str) -> bool:
            return token == fresh

        tokens = self.manager(clock, cloud, store)
        await tokens.acquire("SN", check)
        self.assertEqual((tokens.token, tokens.origin, cloud.calls), (fresh, "cloud", 1))

    async def test_static_token_without_credentials(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        expired = make_jwt("SN", iat=clock.seconds() - 2 * DAY, lifetime=DAY)
        tokens = self.manager(clock, None, DictStore(), token=expired)

        async def check(token: str) -> bool:
            return True

        with self.assertRaises(AuthError) as caught:
            await tokens.acquire("SN", check)
        self.assertIn("expired", str(caught.exception))
        self.assertNotIn(expired, str(caught.exception))
        other = make_jwt("OTHER", iat=clock.seconds())
        with self.assertRaises(AuthError) as caught:
            await self.manager(clock, None, DictStore(), token=other).acquire("SN", check)
        self.assertIn("another Envoy", str(caught.exception))

    async def test_reauthenticate_once(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        first = make_jwt("SN", iat=clock.seconds())
        second = make_jwt("SN", iat=clock.seconds())
        cloud = StubCloud([first, second])
        accepted = {first}

        async def check(token: str) -> bool:
            return token in accepted

        tokens = self.manager(clock, cloud, DictStore())
        await tokens.acquire("SN", check)
        self.assertEqual(tokens.token, first)
        await tokens.reauthenticate(check)  # the Envoy still accepts it: no cloud call
        self.assertEqual(cloud.calls, 1)
        accepted = {second}
        await tokens.reauthenticate(check)
        self.assertEqual((tokens.token, cloud.calls), (second, 2))


class WatchedMeter(Meter):
    """A Meter whose updates and failures wake waiting tests."""

    def __init__(self) -> None:
        super().__init__("grid", reactor, stale_after=30.0, source_type="envoy")
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self.readings: list[Any] = []

    def update(self, reading: Any) -> bool:
        new = super().update(reading)
        if new:
            self.readings.append(reading)
        self._wake()
        return new

    def report_failure(self, error: str, down: bool = True) -> None:
        super().report_failure(error, down)
        self._wake()

    def _wake(self) -> None:
        for entry in list(self._waiters):
            check, d = entry
            if check() and not d.called:
                self._waiters.remove(entry)
                d.callback(None)

    def wait(self, check: Callable[[], bool], timeout: float = 10.0) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if check():
            d.callback(None)
            return d
        self._waiters.append((check, d))
        return d.addTimeout(timeout, reactor)

    def wait_reading(self, count: int = 1) -> Deferred[None]:
        start = self.stats.fetches
        return self.wait(lambda: self.latest is not None and self.stats.fetches >= start + count)

    def wait_error(self, text: str) -> Deferred[None]:
        return self.wait(lambda: self.stats.last_error is not None and text in self.stats.last_error)


class LogCapture:
    def __init__(self, case: TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        lines = []
        for event in self.events:
            lines.append(formatEvent(event) or "")
            lines.append(repr({k: v for k, v in event.items() if k != "log_logger"}))
        return "\n".join(lines)


class IOCase(TestCase):
    timeout = 30

    def envoy(self, folder: str, **kw: Any) -> FakeEnvoy:
        fake = FakeEnvoy(folder, **kw)
        fake.start()
        self.addCleanup(fake.stop)
        return fake

    def cloud(self, envoy: FakeEnvoy | None = None, **kw: Any) -> FakeCloud:
        fake = FakeCloud(envoy.state if envoy else None, **kw)
        fake.start()
        self.addCleanup(fake.stop)
        return fake

    def token_for(self, envoy: FakeEnvoy, **kw: Any) -> str:
        token = make_jwt(envoy.info.serial, **kw)
        envoy.state.valid_tokens.add(token)
        return token

    def source(self, envoy: FakeEnvoy, store: Any = None, meter: WatchedMeter | None = None,
               **kw: Any) -> tuple[EnvoySource, WatchedMeter]:
        opts: dict[str, Any] = {"url": envoy.url, "interval": 0.2, "timeout": 5.0, "totals_interval": 60.0}
        if envoy.tls and "verify_ssl" not in kw and "tls_fingerprint" not in kw:
            opts["tls_fingerprint"] = envoy.fingerprint
        opts.update(kw)
        options = EnvoyOptions(**opts)
        self.assertEqual(options.validate(), [])
        meter = meter or WatchedMeter()
        source = EnvoySource(meter, options, reactor, store if store is not None else DictStore())
        source.startService()
        self.addCleanup(source.stopService)
        return source, meter


class ReplayTests(IOCase):
    """Every fixture folder through the real client: HTTPS + token, or HTTP + Digest."""

    async def replay(self, folder: str) -> None:
        envoy = self.envoy(folder)
        kw: dict[str, Any] = {}
        if envoy.token_mode:
            kw["token"] = self.token_for(envoy)
        source, meter = self.source(envoy, **kw)
        expected = expected_grid(folder)
        if expected is None:
            await meter.wait_error("no grid data")
            self.assertEqual(meter.freshness(), Freshness.DOWN, folder)
            self.assertIsNone(meter.latest, folder)
            return
        await meter.wait_reading(2)
        powers, energy = expected
        reading = meter.latest
        self.assertEqual(len(reading.phases), len(powers), folder)
        for got, want in zip(reading.powers(), powers, strict=True):
            self.assertLessEqual(abs(got - want), TOL, f"{folder}: {reading.powers()} != {powers}")
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        if energy is not None:  # the Meter follows the Envoy's per-phase lifetime counters
            self.assertEqual([(c.import_wh, c.export_wh) for c in meter.energy.phases[: len(powers)]],
                             channel_energy(folder), folder)
            self.assertEqual(reading.energy, tuple(channel_energy(folder)))
            if folder in CONSISTENT_READINGS:
                self.assertLessEqual(abs(meter.energy.total_import_wh - energy[0]), 0.1, folder)
                self.assertLessEqual(abs(meter.energy.total_export_wh - energy[1]), 0.1, folder)
        self.assertEqual(envoy.max_concurrent, 1, folder)
        if envoy.token_mode:
            self.assertTrue(envoy.tls)
            auth = [s.headers.get("authorization", "") for s in envoy.seen if s.path == "/ivp/meters/readings"]
            self.assertTrue(all(a.startswith("Bearer ") for a in auth), folder)
        else:
            self.assertFalse(envoy.tls)
            digest = [s.headers.get("authorization", "") for s in envoy.seen
                      if s.path == "/ivp/meters/readings"]
            self.assertTrue(digest and all(a.startswith('Digest username="installer"') for a in digest))

    def test_production_json_fallback_without_readings(self) -> None:
        envoy = self.envoy("8.3.5169_with_generator")
        envoy.overrides["/ivp/meters/readings"] = (404, {}, b'{"error": "404 - Not Found"}')
        source, meter = self.source(envoy, token=self.token_for(envoy))

        def check(_: Any) -> None:
            self.assertEqual(source.path, "production")
            self.assertEqual(len(meter.latest.phases), 2)
            for got, want in zip(meter.latest.powers(), [-295.092, 460.393], strict=True):
                self.assertAlmostEqual(got, want, places=3)
            self.assertIsNone(meter.latest.energy)
            self.assertIn("/production.json?details=1", envoy.paths())

        return meter.wait_reading(2).addCallback(check)


def _add_replay_tests() -> None:
    for folder in folders():
        name = "test_" + folder.replace(".", "_").replace("-", "_")

        def test(self: ReplayTests, folder: str = folder) -> Any:
            return self.replay(folder)

        test.__name__ = name
        setattr(ReplayTests, name, test)


_add_replay_tests()


class AuthFlowTests(IOCase):
    FOLDER = "8.2.4286_with_3cts_and_battery_split"

    async def test_static_token(self) -> None:
        envoy = self.envoy(self.FOLDER)
        token = self.token_for(envoy)
        source, meter = self.source(envoy, token=token)
        await meter.wait_reading(2)
        self.assertEqual(envoy.paths()[:3], ["/info", "/auth/check_jwt", "/ivp/meters"])
        self.assertEqual(envoy.paths().count("/auth/check_jwt"), 1)
        self.assertEqual(envoy.seen[1].headers["authorization"], f"Bearer {token}")
        self.assertEqual(source.tokens.origin, "config")

    async def test_enlighten_login_entrez_token_check_jwt_and_cache(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        store = DictStore()
        ca = cloud.write_ca(self.mktemp())
        creds = {"username": cloud.username, "password": cloud.password, "enlighten_url": cloud.url,
                 "entrez_url": cloud.url, "cloud_ca_file": ca}
        source, meter = self.source(envoy, store=store, **creds)
        await meter.wait_reading(2)
        self.assertEqual((cloud.logins, len(cloud.issued)), (1, 1))
        token = cloud.issued[0]
        self.assertEqual(store.get(f"envoy:{envoy.info.serial}:token"), token)
        login = cloud.seen[0]
        self.assertTrue(login.path.startswith("/login/login.json"))
        self.assertIn(b"user%5Bemail%5D=owner%40example.com", login.body)
        entrez = json.loads(cloud.seen[1].body)
        self.assertEqual(entrez["serial_num"], envoy.info.serial)
        self.assertEqual(entrez["username"], cloud.username)
        self.assertIn("/auth/check_jwt", envoy.paths())
        await source.stopService()
        # a second start uses the cached token: no cloud call
        source2, meter2 = self.source(envoy, store=store, **creds)
        await meter2.wait_reading(2)
        self.assertEqual(cloud.logins, 1)
        self.assertEqual(source2.tokens.origin, "store")

    async def test_the_example_files_cloud_urls_reach_the_services(self) -> None:
        """Issue #22.18: the example's URLs carried paths the code added again."""
        from urllib.parse import urlsplit

        from meteremu.config import load_meter_file
        from meteremu.sources.envoy.auth import service_base

        example = load_meter_file(os.path.join(ROOT, "etc", "examples", "envoy.yaml"), env={}).source.options
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        here = urlsplit(cloud.url)

        def on_the_fake(url: str) -> str:  # the example's path, on the fake cloud's scheme and host
            return urlsplit(url)._replace(scheme=here.scheme, netloc=here.netloc).geturl()

        source, meter = self.source(envoy, username=cloud.username, password=cloud.password,
                                    enlighten_url=on_the_fake(example.enlighten_url),
                                    entrez_url=on_the_fake(example.entrez_url),
                                    cloud_ca_file=cloud.write_ca(self.mktemp()))
        await meter.wait_reading(1)
        self.assertEqual([urlsplit(s.path).path for s in cloud.seen], ["/login/login.json", "/tokens"])
        for written in ("https://enlighten.enphaseenergy.com", "https://enlighten.enphaseenergy.com/",
                        "https://enlighten.enphaseenergy.com/login/login.json"):  # older example files
            self.assertEqual(service_base(written, "/login/login.json"), "https://enlighten.enphaseenergy.com")

    async def test_401_triggers_one_reauthentication(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        source, meter = self.source(envoy, username=cloud.username, password=cloud.password,
                                    enlighten_url=cloud.url, entrez_url=cloud.url,
                                    cloud_ca_file=cloud.write_ca(self.mktemp()))
        await meter.wait_reading(2)
        old = cloud.issued[0]
        envoy.state.valid_tokens.clear()  # the Envoy forgets the token (reboot, revocation)
        envoy.state.sessions.clear()
        before = meter.stats.fetches
        await meter.wait(lambda: len(cloud.issued) == 2 and meter.stats.fetches >= before + 2)
        self.assertNotEqual(source.tokens.token, old)
        self.assertEqual(cloud.logins, 2)
        self.assertEqual(meter.stats.failures, 0)  # re-authenticated within the cycle
        rejected = [s for s in envoy.seen if s.headers.get("authorization") == f"Bearer {old}"]
        self.assertTrue(rejected)

    async def test_401_without_credentials_is_down_with_a_clear_error(self) -> None:
        envoy = self.envoy(self.FOLDER)
        token = self.token_for(envoy)
        source, meter = self.source(envoy, token=token)
        await meter.wait_reading(1)
        envoy.state.valid_tokens.clear()
        envoy.state.sessions.clear()
        await meter.wait_error("rejected the token")
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertNotIn(token, meter.stats.last_error)

    async def test_second_refusal_after_reauthentication_is_an_error(self) -> None:
        envoy = self.envoy(self.FOLDER)
        token = self.token_for(envoy)
        source, meter = self.source(envoy, token=token)
        await meter.wait_reading(1)
        envoy.overrides["/ivp/meters/readings"] = (403, {}, b"forbidden")
        await meter.wait_error("even after re-authentication (HTTP 403)")
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        checks = envoy.paths().count("/auth/check_jwt")
        self.assertEqual(checks, 2)  # once at connect, once to re-authenticate: no loop
        del envoy.overrides["/ivp/meters/readings"]
        await meter.wait(lambda: meter.freshness() == Freshness.FRESH)

    async def test_expired_cached_token_is_refreshed_from_the_cloud(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        store = DictStore()
        now = reactor.seconds()
        expired = make_jwt(envoy.info.serial, iat=now - 366 * DAY, lifetime=365 * DAY)
        nearly = make_jwt(envoy.info.serial, iat=now - 340 * DAY, lifetime=365 * DAY)  # 25 days left
        envoy.state.valid_tokens.update({expired, nearly})
        store.put(f"envoy:{envoy.info.serial}:token", expired)
        creds = {"username": cloud.username, "password": cloud.password, "enlighten_url": cloud.url,
                 "entrez_url": cloud.url, "cloud_ca_file": cloud.write_ca(self.mktemp())}
        source, meter = self.source(envoy, store=store, **creds)
        await meter.wait_reading(1)
        self.assertEqual(len(cloud.issued), 1)
        self.assertEqual(source.tokens.token, cloud.issued[0])
        self.assertEqual(store.get(f"envoy:{envoy.info.serial}:token"), cloud.issued[0])
        await source.stopService()
        # an owner token with fewer than 30 days left is renewed ahead of expiry
        store.put(f"envoy:{envoy.info.serial}:token", nearly)
        source2, meter2 = self.source(envoy, store=store, **creds)
        await meter2.wait_reading(1)
        self.assertEqual(len(cloud.issued), 2)
        self.assertEqual(source2.tokens.token, cloud.issued[1])

    async def test_installer_token_lifetime(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy, user_type="installer", lifetime=12 * 3600)
        source, meter = self.source(envoy, username=cloud.username, password=cloud.password,
                                    enlighten_url=cloud.url, entrez_url=cloud.url,
                                    cloud_ca_file=cloud.write_ca(self.mktemp()))
        await meter.wait_reading(1)
        claims = source.tokens.claims
        self.assertEqual((claims.user_type, claims.lifetime, claims.refresh_margin), ("installer", 43200, 3600))

    async def test_mfa_account_is_a_clear_error(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        cloud.mfa = True
        source, meter = self.source(envoy, username=cloud.username, password=cloud.password,
                                    enlighten_url=cloud.url, entrez_url=cloud.url,
                                    cloud_ca_file=cloud.write_ca(self.mktemp()))
        await meter.wait_error("multi-factor")
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertEqual(source.next_delay, 300.0)  # no hammering of the cloud
        self.assertEqual(cloud.issued, [])

    async def test_wrong_password(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        source, meter = self.source(envoy, username=cloud.username, password="wrong-password-123",
                                    enlighten_url=cloud.url, entrez_url=cloud.url,
                                    cloud_ca_file=cloud.write_ca(self.mktemp()))
        await meter.wait_error("check username and password")
        self.assertNotIn("wrong-password-123", meter.stats.last_error)

    async def test_cloud_tls_is_verified(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        source, meter = self.source(envoy, username=cloud.username, password=cloud.password,
                                    enlighten_url=cloud.url, entrez_url=cloud.url)  # no CA given
        await meter.wait_error("Enlighten login failed")
        self.assertIn("TLS", meter.stats.last_error)
        self.assertEqual(cloud.logins, 0)  # the credentials never reached an unverified peer
        self.flushLoggedErrors()

    async def test_digest_on_old_firmware(self) -> None:
        envoy = self.envoy("4.10.35")
        source, meter = self.source(envoy)
        await meter.wait_reading(2)
        self.assertEqual(source.digest.username, "installer")
        readings = [s for s in envoy.seen if s.path == "/ivp/meters/readings"]
        self.assertTrue(all('Digest username="installer"' in s.headers.get("authorization", "")
                            for s in readings))
        self.assertNotIn("authorization", envoy.seen[0].headers)  # /info needs none
        self.assertEqual(envoy.paths().count("/ivp/meters"), 2)  # challenge once, then reused

    async def test_wrong_digest_password(self) -> None:
        envoy = self.envoy("4.10.35")
        source, meter = self.source(envoy, digest_password="not-the-password")
        await meter.wait_error("Digest authentication as 'installer' was refused")
        self.assertNotIn("not-the-password", meter.stats.last_error)


class TLSAndResilienceTests(IOCase):
    FOLDER = "8.3.5167_3rd-pv"

    async def test_wrong_fingerprint_is_refused(self) -> None:
        envoy = self.envoy(self.FOLDER)
        source, meter = self.source(envoy, token=self.token_for(envoy), tls_fingerprint="00" * 32)
        await meter.wait_error("does not match tls_fingerprint")
        self.assertIn(envoy.fingerprint, meter.stats.last_error)  # tells the user what to pin
        self.assertEqual(envoy.seen, [])
        self.flushLoggedErrors()

    async def test_unverified_self_signed_is_refused_by_default(self) -> None:
        envoy = self.envoy(self.FOLDER)
        source, meter = self.source(envoy, token=self.token_for(envoy), verify_ssl=True,
                                    tls_fingerprint=None)
        await meter.wait_error("TLS certificate not trusted")
        self.assertEqual(envoy.seen, [])
        self.flushLoggedErrors()

    async def test_verify_ssl_false_accepts_it(self) -> None:
        envoy = self.envoy(self.FOLDER)
        source, meter = self.source(envoy, token=self.token_for(envoy), verify_ssl=False)
        await meter.wait_reading(1)
        self.assertEqual(len(meter.latest.phases), 3)

    async def test_timeout_is_down_then_recovers_with_info_again(self) -> None:
        envoy = self.envoy(self.FOLDER)
        source, meter = self.source(envoy, token=self.token_for(envoy), timeout=1.0, backoff_max=0.5)
        await meter.wait_reading(2)
        envoy.hang.add("/ivp/meters/readings")
        await meter.wait_error("the Envoy did not answer: timed out")
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        last = meter.latest.powers()
        envoy.hang.clear()
        seen_before = len(envoy.seen)
        await meter.wait(lambda: meter.freshness() == Freshness.FRESH)
        self.assertEqual(envoy.seen[seen_before].path, "/info")
        self.assertTrue(envoy.hung)
        for request in envoy.hung:
            self.assertTrue(request._disconnected)  # the client closed each stalled socket
        envoy.hung.clear()
        self.assertEqual(len(meter.latest.phases), len(last))
        self.assertEqual(envoy.max_concurrent, 1)

    async def test_refused_connection_then_recovery(self) -> None:
        envoy = self.envoy(self.FOLDER)
        token = self.token_for(envoy)
        source, meter = self.source(envoy, token=token, backoff_max=0.4)
        await meter.wait_reading(1)
        port = envoy.listener.number
        await envoy.stop()
        await meter.wait_error("did not answer")
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        envoy.start(port)
        await meter.wait(lambda: meter.freshness() == Freshness.FRESH)

    async def test_slow_path_extras_and_inverters(self) -> None:
        envoy = self.envoy("8.2.4382_ACB")
        serial = "122050070266"
        tags = {serial: {"array": "south", "row": "1"}}
        source, meter = self.source(envoy, token=self.token_for(envoy), inverters=True,
                                    totals_interval=0.2, inverters_interval=0.2, inverter_tags=tags)
        self.assertEqual(meter.extra_labels[f"inverter.{serial}"], {"array": "south", "row": "1"})
        await meter.wait(lambda: meter.latest is not None and "pv_power" in meter.latest.extras)
        self.assertAlmostEqual(meter.latest.extras["pv_power"], 311.12)
        self.assertEqual(meter.latest.extras["acb_soc"], 25)
        await meter.wait(lambda: envoy.paths().count("/api/v1/production/inverters") >= 3)

        def inverter_keys() -> list[str]:
            return [k for r in meter.readings for k in r.extras if k.startswith("inverter.")]

        self.assertEqual(inverter_keys(), [])  # the first poll only learns the report dates
        envoy.bump_inverters(serials={serial}, watts=42)
        await meter.wait(lambda: bool(inverter_keys()))
        carrying = [r for r in meter.readings if f"inverter.{serial}" in r.extras]
        self.assertEqual(len(carrying), 1)  # reported once: its lastReportDate moved once
        self.assertEqual(carrying[0].extras[f"inverter.{serial}"], 42)
        self.assertEqual(inverter_keys(), [f"inverter.{serial}"])
        await meter.wait_reading(2)
        self.assertEqual(inverter_keys(), [f"inverter.{serial}"])
        self.assertIn("pv_power", meter.latest.extras)  # totals stay in every reading
        self.assertEqual(envoy.max_concurrent, 1)

    async def test_livedata_path_enables_the_stream(self) -> None:
        envoy = self.envoy(self.FOLDER)
        envoy.livedata = livedata_three_phase(stream="disabled")

        def tick(seen: Any) -> None:
            if seen.path == "/ivp/livedata/status":
                envoy.livedata["meters"]["last_update"] += 1

        envoy.on_request = tick
        source, meter = self.source(envoy, token=self.token_for(envoy), fast_path="livedata")
        await meter.wait_reading(1)
        posts = [s for s in envoy.seen if s.path == "/ivp/livedata/stream"]
        self.assertEqual(len(posts), 1)
        self.assertEqual(json.loads(posts[0].body), {"enable": 1})
        self.assertEqual(source.path, "livedata")
        for got, want in zip(meter.latest.powers(), [1200.0, -300.5, 7.0], strict=True):
            self.assertAlmostEqual(got, want)


class EndToEndTests(IOCase):
    async def test_udp_em_getstatus_returns_the_envoys_phases(self) -> None:
        envoy = self.envoy("8.3.5167_3rd-pv")
        token = self.token_for(envoy)
        ports = free_udp_ports(1)
        config = test_config(self.mktemp(), meters={"grid": {"source": {
            "type": "envoy", "url": envoy.url, "token": token, "tls_fingerprint": envoy.fingerprint,
            "interval": "200ms"}}}, devices=[{"type": "shelly_pro_3em", "udp_ports": ports}])
        app = await start_app(self, config)
        meter = app.meters["grid"]
        first: Deferred[None] = Deferred()

        def listener(m: Meter, reading: Any) -> None:
            if not first.called:
                first.callback(None)

        meter.add_listener(listener)
        if meter.latest is None:
            await first.addTimeout(10, reactor)
        battery = Battery()
        port = reactor.listenUDP(0, battery, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        raw = await battery.ask(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', ports[0])
        result = json.loads(raw)["result"]
        # + = import: this Envoy exports on every phase
        self.assertAlmostEqual(result["a_act_power"], -2879.825, places=1)
        self.assertAlmostEqual(result["b_act_power"], -877.472, places=1)
        self.assertAlmostEqual(result["c_act_power"], -1154.943, places=1)
        self.assertAlmostEqual(result["total_act_power"], -4912.24, places=1)
        raw = await battery.ask(b'{"id":2,"method":"EMData.GetStatus","params":{"id":0}}', ports[0])
        data = json.loads(raw)["result"]
        self.assertAlmostEqual(data["total_act"], 99056.45, places=1)  # the Envoy's own counters
        self.assertAlmostEqual(data["total_act_ret"], 415089.21, places=1)

    async def test_tokens_and_passwords_never_appear(self) -> None:
        capture = LogCapture(self)
        envoy = self.envoy("8.2.4286_with_3cts_and_battery_split")
        cloud = self.cloud(envoy, password="Pa55-w0rd-NEVER-SHOWN")
        ca = cloud.write_ca(self.mktemp())
        config = test_config(self.mktemp(), meters={
            "grid": {"source": {"type": "envoy", "url": envoy.url, "tls_fingerprint": envoy.fingerprint,
                                "interval": "200ms", "username": cloud.username,
                                "password": cloud.password, "enlighten_url": cloud.url,
                                "entrez_url": cloud.url, "cloud_ca_file": ca}},
            "bad": {"source": {"type": "envoy", "url": envoy.url, "tls_fingerprint": envoy.fingerprint,
                               "interval": "200ms", "token": "eyJhbGciOi.STATIC-TOKEN-NEVER-SHOWN.sig"}}})
        app = await start_app(self, config)
        grid = app.meters["grid"]
        got: Deferred[None] = Deferred()
        grid.add_listener(lambda m, r: got.called or got.callback(None))
        if grid.latest is None:
            await got.addTimeout(10, reactor)
        # force a re-authentication, so the token travels once more
        envoy.state.valid_tokens.clear()
        again: Deferred[None] = Deferred()
        issued = len(cloud.issued)

        def after(m: Meter, r: Any) -> None:
            if len(cloud.issued) > issued and not again.called:
                again.callback(None)

        grid.add_listener(after)
        await again.addTimeout(10, reactor)
        http = HTTPClient(self)
        _, health = await http.get(f"http://127.0.0.1:{app.http_port()}/healthz")
        _, metrics = await http.get(f"http://127.0.0.1:{app.http_port()}/metrics")
        health_data = json.loads(health)
        self.assertIn("authentication", health_data["meters"]["bad"]["last_error"])
        self.assertEqual(health_data["meters"]["grid"]["state"], "fresh")
        details = health_data["meters"]["grid"]["details"]
        self.assertEqual((details["serial"], details["firmware"], details["auth"], details["fast_path"],
                          details["phases"], details["token_source"], details["token_type"]),
                         ("123456789012", "8.2.4286", "token", "readings", 2, "cloud", "owner"))
        secrets_ = [cloud.password, "STATIC-TOKEN-NEVER-SHOWN", *cloud.issued, *cloud.sessions]
        shown = "\n".join([health.decode(), metrics.decode(), capture.text()])
        self.assertIn("meteremu_source_polls", metrics.decode())
        for secret in secrets_:
            self.assertNotIn(secret, shown)
        self.assertGreater(len(capture.events), 3)
