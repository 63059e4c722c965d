"""HomeWizard P1 meter (HWE-P1) local API, the I/O part: polls and the v2 WebSocket.

* **API v1** (``api: v1``, the default): ``GET http://<host>/api/v1/data`` every
  ``interval``, no authentication ("Local API" switched on in the app). The
  body has no timestamp, so every successful poll is a new sample taken at its
  arrival time.
* **API v2** (``api: v2``, firmware ≥ 6.00): HTTPS with the device's own
  certificate and ``Authorization: Bearer <token>`` + ``X-Api-Version: 2``.
  ``mode: websocket`` (default) connects to ``wss://<host>/api/ws``, answers
  ``authorization_requested`` with ``{"type": "authorization", "data": token}``,
  waits for ``authorized``, sends ``{"type": "subscribe", "data":
  "measurement"}`` and takes every ``measurement`` push; ``mode: poll`` polls
  ``GET /api/measurement``. The body's ``timestamp`` (local time of the P1
  telegram, ISO-8601 without zone) is the sample's time (``timestamps:
  arrival`` to use the arrival time instead).

TLS for v2 (the device certificate is signed by the HomeWizard CA and names
``appliance/p1dongle/<serial>``, not an address): pin the certificate's
SHA-256 (``tls_fingerprint``), or give the HomeWizard CA (``ca_file``,
optionally with ``tls_name`` to check the name), or ``verify_ssl: false`` on
a trusted LAN (:class:`meteremu.tls.DeviceTLS`). One of them is required:
normal web PKI can never verify the device.

Polls go through the HTTP room (:mod:`meteremu.httpclient`); the WebSocket is
kept up by Twisted's ``ClientService`` (:mod:`meteremu.reconnect`), waiting
``reconnect_min`` doubling up to ``reconnect_max`` (with jitter) after
failures in a row, ``reconnect_max`` after a refused token. The bodies are
mapped by :mod:`.parse` (pure); the options are in :mod:`.options`.

Freshness: v1 and v2 polls that fail are soft failures (the meter goes stale);
three in a row, a refused token or a lost WebSocket mark it down. The
WebSocket is also dropped and reconnected when no message came for
``idle_timeout``. The token only ever goes into the Authorization header and
the authorization message.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from meteremu.backoff import next_delay
from meteremu.clocks import wall
from meteremu.httpclient import HTTPClient, HttpResult
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.logs import logger
from meteremu.meter import Meter, default_stale_after
from meteremu.reading import Reading
from meteremu.reconnect import Reconnector
from meteremu.sources.common import StatefulEvents
from meteremu.sources.homewizard.options import HomeWizardOptions, host_port
from meteremu.sources.homewizard.parse import Measurement, parse_measurement
from meteremu.sources.httppoll import AuthError, HTTPStatusError, describe
from meteremu.sources.stamps import MonotonicStamps
from meteremu.sources.websocket import SourceWebSocket, websocket_reconnector
from meteremu.tls import DeviceTLS, parse_fingerprint

log = logger(__name__)

MAX_BODY = 1024 * 1024
WAIT_WHILE_STOPPING = 3600.0  # stopService cancels it: a retry never comes while stopping
FAILURES_BEFORE_DOWN = 3
FUTURE_SLACK = 300.0  # a device timestamp further ahead of this host's clock is worth a warning


def device_tls(options: HomeWizardOptions) -> DeviceTLS:
    """The certificate is signed by the HomeWizard CA and names
    ``appliance/p1dongle/<serial>``, not an address: normal web PKI can never
    verify it, so the options name one other way (validation makes sure)."""
    if options.tls_fingerprint:
        return DeviceTLS(fingerprint=parse_fingerprint(options.tls_fingerprint))
    if options.ca_file:
        return DeviceTLS(ca_file=options.ca_file, name=options.tls_name)
    return DeviceTLS(verify=False)




class HomeWizardSource(StatefulEvents, Service):
    """Feeds a Meter from a HomeWizard P1 meter (see the module docstring).

    Events for ``when``: a connection state, "sample" or "failure".
    """

    type_name = "homewizard"

    def __init__(self, meter: Meter, options: HomeWizardOptions, reactor: IReactor,
                 clock: IReactorTime | None = None, rng: Callable[[], float] = random.random) -> None:
        self.meter = meter
        self.options = options
        self.reactor: IReactor = reactor
        self.clock = clock if clock is not None else reactor
        self.rng = rng
        self.tz = options.tz()
        self.tls = device_tls(options) if options.api == "v2" else None
        host = options.host.strip()
        if options.api == "v1":
            self.url = f"http://{host}/api/v1/data"
        else:
            self.url = f"https://{host}/api/measurement"
        self.ws_url = f"wss://{host}/api/ws"
        self.push = options.api == "v2" and options.mode == "websocket"
        self.state = "stopped"
        self.failures_in_row = 0
        self.samples = 0
        self.connections = 0
        self.auth_failed = False
        self._stopping = True
        self._timer = None
        self._watchdog: IDelayedCall | None = None
        self.http: HTTPClient | None = None
        self._inflight: Deferred[Any] | None = None
        self.reconnector: Reconnector | None = None
        self.ws: SourceWebSocket | None = None
        self._said: dict[str, str] = {}
        self._waiters: list[tuple[str, Deferred[Any]]] = []
        self._stale_adjusted = False
        self._stamps = MonotonicStamps()
        self.meter.details = {"url": self.ws_url if self.push else self.url, "api": options.api,
                              "mode": "websocket" if self.push else "poll", "connection": self.state}

    # -- lifecycle -----------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        if not self.push:
            self.http = HTTPClient(self.reactor, self.options.timeout, self.tls, clock=self.clock)
            self._call_later(0.0, self._poll)
            return
        if self.reconnector is None:
            self.reconnector = self._reconnector()
        self.reconnector.start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stop_running("_timer", "_watchdog")
        if self._inflight is not None and not self._inflight.called:
            self._inflight.cancel()
        waits: list[Deferred[Any]] = []
        ws = self.ws
        goodbye = None
        if ws is not None and not ws.closed.called and ws.state == ws.STATE_OPEN:
            ws.sendClose(1000)  # the device answers, then closes the connection
            goodbye = ws.closed
        if self.reconnector is not None:
            waits.append(self.reconnector.stop(goodbye))
        http, self.http = self.http, None
        if http is not None:
            waits.append(http.close())
        return defer.DeferredList(waits, consumeErrors=True)

    # -- status ----------------------------------------------------------------------------
    def _schedule(self, delay: float) -> None:
        self._call_later(delay, self._poll)

    def _backoff(self) -> float:
        if self.auth_failed:
            return self.options.reconnect_max
        return next_delay(self.failures_in_row, self.options.reconnect_min, self.options.reconnect_max, self.rng)

    # -- samples ----------------------------------------------------------------------------
    def _take(self, data: Any) -> Measurement:
        """Parse and hand a body to the Meter (ValueError if it is unusable)."""
        measurement = parse_measurement(data, self.options.api, wall(self.clock), self.tz,
                                        self.options.timestamps)
        self.failures_in_row = 0
        self.auth_failed = False
        self.samples += 1
        self._said.pop("failure", None)
        self.meter.extra_labels = measurement.labels
        self.meter.details.update({
            "samples": self.samples, "meter_model": measurement.meter_model,
            "smr_version": measurement.smr_version, "devices": list(measurement.devices),
            "phase_power": "per phase" if measurement.per_phase_power else "total on phase A"})
        self._adjust_stale_after(measurement.smr_version)
        self.meter.update(self._monotonic(measurement.reading))
        return measurement

    def _monotonic(self, reading: Reading) -> Reading:
        """The device's timestamp made monotonic (:mod:`meteremu.sources.stamps`)."""
        stamp = reading.measured_at
        if stamp > wall(self.clock) + FUTURE_SLACK:
            self._say("clock", f"the device's timestamp is {stamp - wall(self.clock):.0f} s ahead of this "
                               "host's clock (timestamps: arrival ignores it)")
        else:
            self._said.pop("clock", None)
        measured = self._stamps.publish(stamp)
        return reading if measured == stamp else dataclasses.replace(reading, measured_at=measured)

    def _adjust_stale_after(self, version: int | None) -> None:
        """A DSMR 2-4 meter sends every 10 s: 1 s defaults would flap between fresh and stale."""
        if self._stale_adjusted or version is None or version >= 50 or api_timestamps_arrival(self):
            return
        self._stale_adjusted = True
        if self.meter.stale_after == default_stale_after(self.options.interval) and self.meter.stale_after < 30:
            self.meter.stale_after = 30.0
            self.meter.details["stale_after"] = "30 s (a DSMR 4 meter sends every 10 s)"
            self._say("stale", "the P1 meter is DSMR 4 (a telegram every 10 s): stale_after set to 30 s", "info")

    def _failed(self, message: str, down: bool = False) -> None:
        """Count a failure; three in a row (or ``down``) mark the meter down."""
        self.failures_in_row += 1
        down = down or self.failures_in_row >= FAILURES_BEFORE_DOWN
        self.meter.report_failure(message, down=down)
        self._say("failure", message)

    # -- polling (v1, v2 poll) -----------------------------------------------------------------
    def _poll(self) -> None:
        self._timer = None
        if self._stopping:
            return
        headers = {"Accept": "application/json"}
        if self.options.api == "v2":
            headers["Authorization"] = f"Bearer {self.options.token}"
            headers["X-Api-Version"] = "2"
        started = self.clock.seconds()
        assert self.http is not None
        d = self.http.request("GET", self.url, headers, limit=MAX_BODY)

        def got(result: HttpResult) -> Any:
            if result.status in (401, 403):
                raise AuthError(f"the device rejected the token (HTTP {result.status})")
            if result.status != 200:
                raise HTTPStatusError(f"HTTP {result.status} from /{self.url.split('/', 3)[-1]}")
            return json.loads(result.body)

        d.addCallback(got)
        self._inflight = d

        def ok(data: Any) -> None:
            self._inflight = None
            try:
                measurement = self._take(data)
            except ValueError as exc:
                failed(Failure(exc))
                return
            except Exception as exc:  # noqa: BLE001 - whatever it is, the poll loop must go on
                log.failure("HomeWizard: unexpected error taking a sample", Failure(exc))
                failed(Failure(exc))
                return
            self._schedule(max(0.0, self.options.interval - (self.clock.seconds() - started)))
            self._set_state("polling")
            self._emit("sample", measurement)

        def failed(failure: Failure) -> None:
            self._inflight = None
            if self._stopping:
                return
            if failure.check(AuthError):
                self.auth_failed = True
                message = f"HomeWizard {describe(failure)}"
                self._failed(message, down=True)
                state = "bad token"
            else:
                message = f"HomeWizard poll failed: {describe(failure, self.tls)}"
                self._failed(message)
                state = "failing"
            self._schedule(self._backoff())
            self._set_state(state)
            self._emit("failure", message)

        d.addCallbacks(ok, failed)

    # -- WebSocket (v2) ------------------------------------------------------------------------------
    def _reconnector(self) -> Reconnector:
        assert self.tls is not None
        host, port = host_port(self.options.host, 443)
        return websocket_reconnector(self, self.ws_url, host, port, tls=self.tls, timeout=self.options.timeout,
                                     max_size=MAX_BODY, reactor=self.reactor, clock=self.clock,
                                     retry=self._retry_delay, attempting=self._attempting,
                                     failed=self._connect_failed,
                                     name=f"meter {self.meter.name}: HomeWizard {self.ws_url}")

    # ClientService's hooks (meteremu.reconnect): they run inside its state machine.
    def _attempting(self) -> None:
        assert self.tls is not None
        self.tls.problem = None
        self._set_state("connecting")

    def _connect_failed(self, failure: Failure) -> None:
        if self._stopping or failure.check(defer.CancelledError):
            return
        message = f"cannot connect to {self.ws_url}: {describe(failure, self.tls)}"
        self._failed(message, down=True)
        self._set_state("disconnected")
        self._emit("failure", message)

    def _retry_delay(self) -> float:
        return WAIT_WHILE_STOPPING if self._stopping else self._backoff()

    def ws_connected(self, proto: SourceWebSocket) -> None:
        if self._stopping:
            proto.dropConnection(abort=True)
            return
        self.ws = proto
        # The TLS and WebSocket handshakes are still to come; the device
        # waits 40 s for the token after that.
        self._arm_watchdog(2 * self.options.timeout + 40.0)

    def ws_opened(self, proto: SourceWebSocket) -> None:
        if proto is not self.ws or self._stopping:
            proto.dropConnection(abort=True)
            return
        self.connections += 1
        self._set_state("authorizing")

    def ws_message(self, proto: SourceWebSocket, payload: bytes) -> None:
        if proto is not self.ws or self._stopping:
            return
        try:
            message = json.loads(payload)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            self._say("frame", "ignoring a WebSocket frame that is not JSON")
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        data = message.get("data")
        if kind == "authorization_requested":
            proto.sendMessage(json.dumps({"type": "authorization", "data": self.options.token}).encode())
        elif kind == "authorized":
            proto.sendMessage(json.dumps({"type": "subscribe", "data": "measurement"}).encode())
            self._arm_watchdog(self.options.idle())
            self._set_state("subscribing")
        elif kind == "measurement":
            try:
                measurement = self._take(data)
            except ValueError as exc:
                self._say("frame", f"ignoring an unusable measurement: {exc}")
                return
            except Exception as exc:  # noqa: BLE001 - a bug must not escape into autobahn
                log.failure("HomeWizard: unexpected error taking a measurement", Failure(exc))
                self._say("frame", f"ignoring a measurement that could not be taken ({type(exc).__name__})")
                return
            self._arm_watchdog(self.options.idle())
            if self.state != "connected":
                self._set_state("connected")
            self._emit("sample", measurement)
        elif kind == "error":
            text = str(data.get("message") if isinstance(data, dict) else data)
            if "unauthorized" in text:
                self.auth_failed = True
                proto.reason = "HomeWizard rejected the token (user:unauthorized)"
                proto.sendClose(1000)
            else:
                self._say("error", "HomeWizard WebSocket error (its text is not repeated: it could echo the token)")

    def _arm_watchdog(self, seconds: float) -> None:
        self._rearm("_watchdog", seconds, self._idle)

    def _idle(self) -> None:
        self._watchdog = None
        ws = self.ws
        if ws is None or self._stopping:
            return
        ws.reason = f"no message from {self.ws_url} for {self.options.idle():g} s; reconnecting"
        ws.dropConnection(abort=True)

    def ws_closed(self, proto: SourceWebSocket, code: int | None, reason: str | None) -> None:
        if proto is not self.ws:
            return
        self.ws = None
        self._cancel_timers("_watchdog")
        if self._stopping:
            return
        assert self.tls is not None
        if proto.reason:
            message = proto.reason
        elif self.tls.problem:
            message = f"cannot connect to {self.ws_url}: TLS: {self.tls.problem}"
        else:
            message = f"HomeWizard WebSocket closed ({code})"  # not the server's reason text
        self._failed(message, down=True)
        self._set_state("bad token" if self.auth_failed else "disconnected")
        self._emit("failure", message)


def api_timestamps_arrival(source: HomeWizardSource) -> bool:
    """Samples timed on arrival are new on every poll: no flapping to correct."""
    return source.options.api == "v1" or source.options.timestamps == "arrival"
