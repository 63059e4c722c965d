"""The Envoy poll service: treq client, TLS policy, connect / poll / back off.

One :class:`EnvoySource` per configured Envoy. Its rules (specs/envoy.md §7,
design.md §3):

* **One request in flight, cycles never overlap.** A cycle is a coroutine
  that makes its requests one after the other; the next cycle is scheduled
  only when it has finished, at the next multiple of ``interval`` on the wall
  clock (missed ticks are skipped, never queued).
* **Connect** (at start and after every failed cycle): ``/info`` (firmware,
  serial; https → http fallback), authentication (token + ``check_jwt`` on
  firmware >= 7, Digest on older), ``/ivp/meters``, then the first fast
  sample, which also picks the fast path.
* **Fast path** every cycle: per-phase grid power to the Meter.
  **Slow path**, at most one slow task per cycle after the fast request:
  totals every ``totals_interval`` (extra values carried by every reading),
  inverters every ``inverters_interval`` (an ``inverter.<serial>`` extra in
  the next new reading only, when that inverter's ``lastReportDate`` moved).
* **Failure**: the Meter is marked ``down`` with a secret-free reason (never
  fed zeros), and the next attempt waits an exponentially growing, jittered
  delay up to ``backoff_max``. The next success clears ``down``.
* Every request is bounded as a whole (connect, headers *and* body) and a
  cancelled body read closes its socket.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

from meteremu.clocks import wall
from meteremu.failures import describe, exception_of, is_tls_error
from meteremu.httpclient import BodyTooLarge, HTTPClient, HttpResult
from meteremu.interfaces import IReactor, Values
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.reading import Reading
from meteremu.sources.envoy import parse
from meteremu.sources.envoy.auth import (
    AuthError,
    DigestAuth,
    EnlightenCloud,
    PermanentAuthError,
    Redactor,
    TokenManager,
    describe_expiry,
    envoy_password,
    installer_password,
)
from meteremu.sources.envoy.options import EnvoyOptions
from meteremu.sources.envoy.parse import (
    EnvoyInfo,
    EnvoyParseError,
    GridSample,
    InverterTracker,
    MissingSample,
    NoGridData,
)
from meteremu.tls import DeviceTLS, web_policy

log = logger("meteremu.sources.envoy")

REPROBE_DELAY = 300.0  # after a permanent problem (bad credentials, no CT): try again this late
STREAM_ENABLE_EVERY = 10.0  # livedata: re-enable the stream at most this often


# -- errors of one cycle ------------------------------------------------------------


class EnvoyError(Exception):
    """A failed exchange with the Envoy; the message is safe to show."""


class EndpointMissing(EnvoyError):
    """404: this firmware has no such endpoint."""


def _json(result: HttpResult, path: str) -> Any:
    try:
        return json.loads(result.body)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        raise EnvoyParseError(f"{path} did not answer JSON") from None


def aligned_delay(now: float, period: float) -> float:
    """Seconds until the next multiple of ``period`` strictly after ``now``."""
    return (math.floor(now / period + 1e-9) + 1) * period - now


class EnvoySource(Service):
    """Feeds a Meter from an Enphase Envoy (see the module docstring)."""

    type_name = "envoy"

    # ``clock``: the reactor (it also makes the HTTP clients' connections, unless tests give them).
    def __init__(self, meter: Meter, options: EnvoyOptions, clock: IReactor, store: Values | None = None, *,
                 envoy_http: Any = None, cloud_http: Any = None,
                 rng: random.Random | None = None) -> None:
        self.meter = meter
        self.options = options
        self.clock = clock
        self.store = store
        self.rng = rng or random.Random()
        self.redact = Redactor()
        self.redact.add(options.digest_password)
        # The Envoy presents a self-signed certificate without a usable subject
        # name: pin it, or skip the check; normal verification only works behind
        # a proxy with a real certificate. Its older TLS stack needs DEFAULT ciphers.
        self.tls = DeviceTLS(fingerprint=options.fingerprint(), verify=options.verify_ssl, legacy_ciphers=True)
        self.envoy_http = envoy_http or HTTPClient(clock, options.timeout, self.tls,
                                                   connect_timeout=_connect_timeout(options.timeout))
        has_credentials = bool(options.username and options.password)
        if cloud_http is None and has_credentials:
            cloud_http = HTTPClient(clock, options.cloud_timeout, web_policy(options.cloud_ca_file),
                                    persistent=False, connect_timeout=_connect_timeout(options.cloud_timeout))
        self.cloud_http = cloud_http
        cloud = (EnlightenCloud(cloud_http, options.enlighten_url, options.entrez_url, self.redact)
                 if has_credentials and cloud_http is not None else None)
        self.tokens = TokenManager(static_token=options.token, username=options.username,
                                   password=options.password, cloud=cloud, store=store,
                                   clock=clock, redact=self.redact)
        self.digest: DigestAuth | None = None
        self.base = options.base_url()
        self.data_base = self.base
        self.info: EnvoyInfo | None = None
        self.meters: tuple[parse.CTConfig, ...] = ()
        self.path: str | None = None  # the fast path in use
        self.connected = False
        self.failures = 0  # consecutive failed cycles
        self.cycles = 0
        self.requests: list[str] = []  # paths asked, for tests and debugging (bounded)
        self.in_flight = 0
        self.max_in_flight = 0
        self.extras: dict[str, float] = {}  # totals: in every reading until the next totals poll
        self.reported: dict[str, float] = {}  # inverters that reported: in the next new reading only
        self.tracker = InverterTracker()
        for serial, tags in options.inverter_tags.items():
            meter.extra_labels[f"inverter.{serial}"] = dict(tags)
        self._report: parse.ProductionReport | None = None
        self._voltages: tuple[float, ...] = ()
        self._freq: float | None = None
        self._last_ts: float | None = None
        self._last_measured: float | None = None
        self._next_totals = 0.0
        self._next_inverters = 0.0
        self._stream_enabled_at: float | None = None
        self._slow_errors: dict[str, str] = {}
        self._last_error: str | None = None
        self._call: IDelayedCall | None = None
        self._cycle: Deferred[Any] | None = None
        self.next_delay: float | None = None

    # -- service --------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._schedule(0.0)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._cycle is not None:
            self._cycle.cancel()
        self.tokens.stop()
        closing = [self.envoy_http.close()]
        if self.cloud_http is not None:
            closing.append(self.cloud_http.close())
        return DeferredList([d for d in closing if d is not None])

    def _schedule(self, delay: float) -> None:
        self.next_delay = delay
        self._call = self.clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        self.cycles += 1
        d = ensureDeferred(self._run_cycle())
        self._cycle = d
        d.addCallbacks(self._cycle_ok, self._cycle_failed)
        d.addBoth(self._cycle_done)

    def _cycle_ok(self, _: Any) -> float:
        if self.failures or self._last_error:
            log.info("Envoy {serial} answers again ({path} path)",
                     serial=self.info.serial if self.info else "?", path=self.path)
        self.failures = 0
        self._last_error = None
        return aligned_delay(wall(self.clock), self.options.interval)  # on the wall clock's multiples

    def _cycle_failed(self, failure: Failure) -> float | None:
        if not self.running:
            return None
        self.connected = False
        self.failures += 1
        exc = exception_of(failure)
        delay = None
        if isinstance(exc, NoGridData):
            message = f"no grid data from the Envoy: {exc}"
            delay = REPROBE_DELAY
        elif isinstance(exc, PermanentAuthError):
            message = f"Envoy authentication failed: {exc}"
            delay = REPROBE_DELAY
        elif isinstance(exc, AuthError):
            message = f"Envoy authentication failed: {exc}"
        elif isinstance(exc, EnvoyParseError):
            message = f"unexpected answer from the Envoy: {exc}"
        elif isinstance(exc, EnvoyError):
            message = str(exc)
        elif isinstance(exc, defer.CancelledError | defer.TimeoutError) or _is_transport(exc):
            message = f"the Envoy did not answer: {self._describe(exc)}"
        else:
            log.failure("Envoy poll cycle failed unexpectedly", failure)
            message = f"Envoy poll failed: {type(exc).__name__}"
        message = self.redact(message)
        if delay is None:
            delay = self._backoff()
        self.next_delay = delay  # known before the Meter (and whoever watches it) hears
        self.meter.report_failure(message, down=True)
        if message != self._last_error:
            log.warn("{meter}: {text}", meter=self.meter.name, text=message)
            self._last_error = message
        return delay

    def _cycle_done(self, delay: float | None) -> None:
        self._cycle = None
        if self.running and delay is not None:
            self._schedule(delay)

    def _backoff(self) -> float:
        """Equal jitter: somewhere in [d/2, d], d doubling from ``interval`` to ``backoff_max``."""
        doublings = min(max(self.failures - 1, 0), 40)  # no float overflow in a week-long outage
        ceiling = min(self.options.backoff_max, self.options.interval * 2.0 ** doublings)
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def _describe(self, exc: BaseException) -> str:
        if self.tls.mismatch:
            return (f"TLS certificate does not match tls_fingerprint (the Envoy shows "
                    f"{self.tls.seen})")
        text = describe(exc)
        if text == "TLS handshake failed" and self.tls.mode == "web":
            return ("TLS certificate not trusted (the Envoy's is self-signed): set tls_fingerprint "
                    "to pin it, or verify_ssl: false")
        return text

    # -- one cycle --------------------------------------------------------------------

    async def _run_cycle(self) -> None:
        if not self.connected:
            sample = await self._connect()
            if sample is not None:
                self._publish(sample)
            return
        if self.info is not None and self.info.uses_tokens:
            self.tokens.maybe_refresh()
            if await self.tokens.adopt_fresh(self._check_jwt):
                self._describe_connection()
        assert self.path is not None
        try:
            sample = await self._sample(self.path)
        except MissingSample as exc:
            self.meter.report_failure(f"sample skipped: {exc}", down=False)
        else:
            self._publish(sample)
        await self._slow_tasks()

    def _publish(self, sample: GridSample) -> bool:
        """Hand a sample to the Meter; a repeated Envoy timestamp is not new."""
        ts = sample.measured_at
        if ts is None:
            measured = wall(self.clock)
        elif ts == self._last_ts and self._last_measured is not None:
            measured = self._last_measured
        elif self._last_measured is not None and ts <= self._last_measured:
            measured = self._last_measured + 0.001  # the Envoy's clock went back: still new
        else:
            measured = ts
        self._last_ts, self._last_measured = ts, measured
        if sample.phases:
            self._voltages = tuple(p.voltage for p in sample.phases)
            self._freq = sample.phases[0].freq
        extras = {**self.extras, **self.reported}
        reading = Reading(phases=sample.phases, measured_at=measured, energy=sample.energy,
                          extras=MappingProxyType(extras))
        new = self.meter.update(reading)
        if new:
            self.reported.clear()  # each inverter report goes out once (envoy-logger's rule)
        return new

    # -- requests ----------------------------------------------------------------------

    async def _send(self, method: str, url: str, headers: dict[str, str],
                    json_body: Any = None) -> HttpResult:
        if not self.running:  # stopped while this cycle was running: start nothing new
            raise defer.CancelledError("the Envoy source is stopping")
        path = urlsplit(url).path
        self.requests.append(path)
        del self.requests[:-200]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.envoy_http.request(method, url, headers=headers, json_body=json_body)
        finally:
            self.in_flight -= 1

    def _auth_headers(self, method: str, url: str) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.info is not None and self.info.uses_tokens:
            headers.update(self.tokens.headers())
        elif self.digest is not None:
            value = self.digest.header(method, url)
            if value:
                headers["Authorization"] = value
        return headers

    async def _request(self, path: str, method: str = "GET", json_body: Any = None) -> HttpResult:
        """One Envoy request with authentication; one re-authentication on 401/403."""
        url = self.data_base + path
        result = await self._send(method, url, self._auth_headers(method, url), json_body)
        if result.status not in (401, 403):
            return self._checked(result, path)
        if self.info is not None and self.info.uses_tokens:
            log.info("the Envoy answered {status} for {path}; re-authenticating once",
                     status=result.status, path=path)
            await self.tokens.reauthenticate(self._check_jwt)
            self._describe_connection()
            result = await self._send(method, url, self._auth_headers(method, url), json_body)
            if result.status in (401, 403):
                self.tokens.mark_suspect()
                raise AuthError(f"the Envoy refused the token for {path} even after "
                                f"re-authentication (HTTP {result.status})")
            return self._checked(result, path)
        scheme, params = parse.parse_challenge(result.headers.get("www-authenticate", ""))
        if scheme != "digest" or self.digest is None:
            raise EndpointMissing(f"{path} needs authentication this firmware does not offer "
                                  f"(HTTP {result.status})")
        self.digest.challenge(params)
        result = await self._send(method, url, self._auth_headers(method, url), json_body)
        if result.status in (401, 403):
            self.digest.forget()
            raise PermanentAuthError(f"Digest authentication as {self.digest.username!r} was "
                                     f"refused for {path} (HTTP {result.status})")
        return self._checked(result, path)

    def _checked(self, result: HttpResult, path: str) -> HttpResult:
        if result.status == 404:
            raise EndpointMissing(f"{path} is not available on this firmware (HTTP 404)")
        if result.status != 200:
            raise EnvoyError(f"the Envoy answered HTTP {result.status} for {path}")
        return result

    async def _check_jwt(self, token: str) -> bool:
        """``/auth/check_jwt``: True if the Envoy accepts the token (spec §3.1 step 3)."""
        self.redact.add(token)
        url = self.data_base + "/auth/check_jwt"
        result = await self._send("GET", url, {"Authorization": f"Bearer {token}",
                                               "Accept": "text/html, application/json"})
        if result.status == 200 or result.status == 404:
            return True
        if result.status in (401, 403):
            return False
        raise EnvoyError(f"the Envoy answered HTTP {result.status} for /auth/check_jwt")

    # -- connect ----------------------------------------------------------------------

    def _with_scheme(self, base: str, scheme: str) -> str:
        parts = urlsplit(base)
        return urlunsplit((scheme, parts.netloc, "", "", ""))

    async def _fetch_info(self) -> tuple[EnvoyInfo, str]:
        """``/info`` over the configured URL; https without a port falls back to http."""
        bases = [self.base]
        if urlsplit(self.base).scheme == "https" and not self.options.explicit_port():
            bases.append(self._with_scheme(self.base, "http"))
        last: BaseException | None = None
        for base in bases:
            url = base + "/info"
            try:
                result = await self._send("GET", url, {"Accept": "application/xml, text/xml"})
            except (defer.CancelledError, defer.TimeoutError) as exc:
                last = exc
                break  # a timeout is not "no HTTPS here": do not wait twice
            except Exception as exc:
                if not _is_transport(exc) or self.tls.mismatch:
                    raise
                last = exc
                continue
            if result.status != 200:
                raise EnvoyError(f"the Envoy answered HTTP {result.status} for /info")
            return parse.parse_info(result.body), base
        assert last is not None
        raise last

    async def _connect(self) -> GridSample | None:
        self.path = None
        info, info_base = await self._fetch_info()
        if self.info is None or info.software != self.info.software or info.serial != self.info.serial:
            log.info("Envoy {serial}: firmware {firmware}, {auth}", serial=info.serial,
                     firmware=info.firmware,
                     auth="token authentication" if info.uses_tokens else "legacy (Digest) authentication")
        if self.options.serial and self.options.serial != info.serial:
            log.warn("configured serial {configured} differs from the Envoy's {serial}; using the "
                     "Envoy's", configured=self.options.serial, serial=info.serial)
        self.info = info
        if info.uses_tokens:
            if urlsplit(info_base).scheme == "http" and not self.options.explicit_port():
                self.data_base = self._with_scheme(info_base, "https")
            else:
                self.data_base = info_base
            await self.tokens.acquire(info.serial, self._check_jwt)
            self.digest = None
        else:
            self.data_base = info_base
            user = self.options.digest_username
            password = self.options.digest_password or (
                installer_password(info.serial) if user == "installer" else envoy_password(info.serial))
            self.redact.add(password)
            if self.digest is None or self.digest.username != user or self.digest.password != password:
                self.digest = DigestAuth(user, password)
        self.meters = await self._fetch_meters()
        sample = await self._choose_path()
        self.connected = True
        self._describe_connection()
        self._next_totals = self.clock.seconds()  # totals in the next cycle
        if self.options.inverters:
            self._next_inverters = self.clock.seconds()
        return sample

    def _describe_connection(self) -> None:
        """What ``/healthz`` shows about this Envoy (``meter.details``): never secrets."""
        info = self.info
        if info is None:
            return
        details: dict[str, object] = {
            "url": self.data_base, "serial": info.serial, "firmware": info.firmware,
            "fast_path": self.path, "phases": parse.grid_phase_count(self.meters),
        }
        if info.uses_tokens:
            claims = self.tokens.claims
            details["auth"] = "token"
            details["token_source"] = self.tokens.origin
            if claims is not None:
                details["token_type"] = claims.user_type
                details["token_expires"] = describe_expiry(claims)
        else:
            details["auth"] = f"digest ({self.digest.username})" if self.digest else "none"
        self.meter.details = details

    async def _fetch_meters(self) -> tuple[parse.CTConfig, ...]:
        try:
            result = await self._request("/ivp/meters")
        except EndpointMissing:
            return ()
        return parse.parse_meters(_json(result, "/ivp/meters"))

    def _consumption_ct_enabled(self) -> bool:
        return any(ct.enabled and ct.measurement_type in (parse.NET, parse.TOTAL) for ct in self.meters)

    async def _choose_path(self) -> GridSample | None:
        order = {"readings": ("readings", "production"), "production": ("production",),
                 "livedata": ("livedata",)}[self.options.fast_path]
        reasons = []
        for path in order:
            try:
                sample = await self._sample(path)
            except MissingSample as exc:
                if path != "production" or self._consumption_ct_enabled():
                    self.path = path
                    self.meter.report_failure(f"sample skipped: {exc}", down=False)
                    return None
                reasons.append(f"{path}: {exc} (no enabled consumption CT)")
                continue
            except (NoGridData, EndpointMissing) as exc:
                reasons.append(f"{path}: {exc}")
                continue
            except EnvoyParseError as exc:
                if path != "production":
                    raise
                reasons.append(f"{path}: {exc}")
                continue
            if self.path != path:
                log.info("Envoy grid data from the {path} path ({n} phases)", path=path,
                         n=len(sample.phases))
            self.path = path
            return sample
        raise NoGridData("; ".join(reasons))

    # -- the fast paths ------------------------------------------------------------------

    async def _sample(self, path: str) -> GridSample:
        if path == "readings":
            if not self._consumption_ct_enabled():
                if not self.meters:
                    raise NoGridData("not metered (/ivp/meters lists no CT)")
                raise NoGridData("the consumption CT is disabled in /ivp/meters")
            result = await self._request("/ivp/meters/readings")
            readings = parse.parse_readings(_json(result, "/ivp/meters/readings"), self.meters)
            return parse.grid_from_readings(readings)
        if path == "production":
            result = await self._request("/production.json?details=1")
            report = parse.parse_production(_json(result, "/production.json"))
            self._report = report
            return parse.grid_from_production(report, parse.grid_phase_count(self.meters), self._freq)
        if path == "livedata":
            result = await self._request("/ivp/livedata/status")
            live = parse.parse_livedata(_json(result, "/ivp/livedata/status"))
            if live.stream_enabled is False:
                await self._enable_stream()
            return parse.grid_from_livedata(live, parse.grid_phase_count(self.meters),
                                            self._voltages, self._freq)
        raise ValueError(path)

    async def _enable_stream(self) -> None:
        """The livedata meters block only updates while the stream is on (spec §4.7)."""
        now = self.clock.seconds()
        if self._stream_enabled_at is not None and now - self._stream_enabled_at < STREAM_ENABLE_EVERY:
            return
        self._stream_enabled_at = now
        log.info("enabling the Envoy's livedata stream")
        await self._request("/ivp/livedata/stream", method="POST", json_body={"enable": 1})

    # -- the slow path -------------------------------------------------------------------

    async def _slow_tasks(self) -> None:
        """At most one slow request set per cycle: the task that has been due longest."""
        now = self.clock.seconds()
        due = []
        if now >= self._next_totals:
            due.append((self._next_totals, 0, "totals"))
        if self.options.inverters and now >= self._next_inverters:
            due.append((self._next_inverters, 1, "inverters"))
        if not due:
            return
        _, _, task = min(due)
        if task == "totals":
            self._next_totals = now + aligned_delay(now, self.options.totals_interval)
            await self._slow("totals", self._poll_totals)
        else:
            self._next_inverters = now + aligned_delay(now, self.options.inverters_interval)
            await self._slow("inverters", self._poll_inverters)

    async def _slow(self, what: str, task: Callable[[], Any]) -> None:
        """A slow task's failure is logged (once per distinct message), never fatal."""
        try:
            await task()
        except defer.CancelledError:
            raise  # the service is stopping
        except defer.TimeoutError as exc:
            self._slow_failed(what, f"the Envoy did not answer: {describe(exc)}")
        except (EnvoyError, EnvoyParseError, AuthError) as exc:
            self._slow_failed(what, str(exc))
        except Exception as exc:
            if not _is_transport(exc):
                raise
            self._slow_failed(what, f"the Envoy did not answer: {describe(exc)}")
        else:
            self._slow_errors.pop(what, None)

    def _slow_failed(self, what: str, message: str) -> None:
        message = self.redact(message)
        if self._slow_errors.get(what) != message:
            log.warn("{meter}: Envoy {what} poll failed: {text}", meter=self.meter.name,
                     what=what, text=message)
        self._slow_errors[what] = message

    async def _poll_totals(self) -> None:
        report = self._report if self.path == "production" else None
        if report is None:
            try:
                result = await self._request("/production.json")
                report = parse.parse_production(_json(result, "/production.json"))
            except (EnvoyParseError, EndpointMissing):
                report = None  # firmware 3.x: HTML; /api/v1/production has the numbers
        summary = None
        if parse.needs_summary(report):
            try:
                result = await self._request("/api/v1/production")
                summary = parse.parse_production_summary(_json(result, "/api/v1/production"))
            except (EnvoyParseError, EndpointMissing):
                summary = None
        self.extras = parse.totals_extras(report, summary)

    async def _poll_inverters(self) -> None:
        result = await self._request("/api/v1/production/inverters")
        reports = parse.parse_inverters(_json(result, "/api/v1/production/inverters"))
        for report in self.tracker.update(reports):
            self.reported[f"inverter.{report.serial}"] = report.watts


def _is_transport(exc: BaseException) -> bool:
    """A failure to talk to the Envoy at all (as opposed to a bad answer)."""
    return (isinstance(exc, error.ConnectError | error.ConnectionLost | error.ConnectionDone
                       | error.DNSLookupError | error.TimeoutError | ConnectionError | ResponseNeverReceived
                       | RequestTransmissionFailed | ResponseFailed | BodyTooLarge)
            or is_tls_error(exc))


def _connect_timeout(timeout: float) -> float:
    return max(1.0, min(10.0, timeout))
