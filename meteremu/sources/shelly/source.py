"""The Shelly source's I/O: HTTP RPC polling, and the WebSocket with ``NotifyStatus`` pushes.

* **Gen1** (``gen: 1``): ``GET /status`` every ``interval`` (HTTP basic
  auth when a password is set), read by :func:`.parse.gen1_reading_of`.
* **Poll** (``mode: poll``, and the fallback while the WebSocket is down):
  ``GET /rpc/Shelly.GetStatus`` every ``interval`` through the poll loop of
  :mod:`meteremu.sources.httppoll`. A device with a password answers 401
  with a ``WWW-Authenticate: Digest`` challenge (SHA-256, realm = its id):
  the request is repeated at once with the digest answer; a second 401 is a
  wrong password (the meter is down, retried every ``reconnect_max``).
* **WebSocket** (``mode: websocket``, the default): ``ws://host/rpc``; a
  ``Shelly.GetStatus`` call with our ``src`` gives the full status and makes
  the device send ``NotifyStatus`` deltas to this connection, which are
  merged into it (:func:`.parse.merge_status`); when no push came for
  ``interval`` (the device pushes changes only), ``Shelly.GetStatus`` is
  asked again over the same connection. A 401 error frame carries the
  digest challenge as JSON text: the call is repeated with an ``auth``
  object. While the WebSocket is up the poll pauses; when it closes, polling
  resumes at once and the WebSocket is reconnected with backoff. No message
  for ``idle_timeout`` drops and reconnects it.

Every status is read whole by :func:`.parse.reading_of`; the counters are
the device's. The password goes only into the digest answers.
"""

from __future__ import annotations

import json
import os
import random
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from meteremu.clocks import wall
from meteremu.failures import describe
from meteremu.httpclient import HttpResult
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.reading import Reading
from meteremu.reconnect import Reconnector
from meteremu.sources.envoy.parse import parse_challenge
from meteremu.sources.homewizard.options import host_port
from meteremu.sources.http_json.source import auth_headers
from meteremu.sources.httppoll import PollingSource
from meteremu.sources.jsonfields import ValueProblem, decode_document
from meteremu.sources.shelly.options import ShellyOptions
from meteremu.sources.shelly.parse import (
    digest_header,
    gen1_reading_of,
    merge_status,
    reading_of,
    ws_auth,
)
from meteremu.sources.websocket import SourceWebSocket, websocket_reconnector
from meteremu.tls import DeviceTLS

log = logger(__name__)

USER = "admin"  # Gen2 devices have one user
MAX_MESSAGE = 256 * 1024
WAIT_WHILE_STOPPING = 3600.0


class ShellySource(PollingSource):
    """Feeds a Meter from a real Shelly (see the module docstring)."""

    type_name = "shelly"
    label = "Shelly"

    def __init__(self, meter: Meter, options: ShellyOptions, reactor: IReactor,
                 clock: IReactorTime | None = None, rng: Callable[[], float] = random.random) -> None:
        super().__init__(meter, reactor, interval=options.interval, timeout=options.timeout,
                         reconnect_min=options.reconnect_min, reconnect_max=options.reconnect_max,
                         clock=clock, rng=rng)
        self.options = options
        self.url = options.base() + ("/status" if options.gen == 1 else "/rpc/Shelly.GetStatus")
        self.ws_url = options.base("ws") + "/rpc"
        self.push = options.push
        self._challenge: dict[str, str] | None = None
        self._nc = 0
        self.src = f"meteremu-{secrets.token_hex(4)}"
        self.status: dict[str, Any] = {}
        self.ws: SourceWebSocket | None = None
        self.ws_live = False  # the WebSocket has delivered a status: polling pauses
        self.ws_failures = 0
        self.ws_auth_failed = False
        self.ws_samples = 0
        self._ws_challenge: dict[str, Any] | None = None
        self._ws_id = 0
        self._watchdog: IDelayedCall | None = None
        self._refresh: IDelayedCall | None = None
        self.reconnector: Reconnector | None = None
        self.meter.details = {"url": self.ws_url if self.push else self.url, "gen": options.gen,
                              "mode": "websocket" if self.push else "poll", "connection": self.state}

    # -- lifecycle ------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()  # the poll starts at once; the WebSocket pauses it once live
        if self.push:
            if self.reconnector is None:
                host, port = host_port(self.options.host, 80)
                self.reconnector = websocket_reconnector(
                    self, self.ws_url, host, port, tls=DeviceTLS(verify=False), timeout=self.options.timeout,
                    max_size=MAX_MESSAGE, reactor=self.reactor, clock=self.clock, retry=self._ws_retry,
                    attempting=self._ws_attempting, failed=self._ws_failed,
                    name=f"meter {self.meter.name}: Shelly {self.ws_url}")
            self.reconnector.start()

    def stopService(self) -> Deferred[Any]:
        d = super().stopService()
        self._cancel_timers("_watchdog", "_refresh")
        waits = [d]
        ws = self.ws
        goodbye = None
        if ws is not None and not ws.closed.called and ws.state == ws.STATE_OPEN:
            ws.sendClose(1000)
            goodbye = ws.closed
        if self.reconnector is not None:
            waits.append(self.reconnector.stop(goodbye))
        return defer.DeferredList(waits, consumeErrors=True)

    # -- polling -------------------------------------------------------------------------------
    def _poll(self) -> None:
        if self.ws_live:
            self._timer = None
            return  # the WebSocket feeds the meter; polling resumes when it closes
        super()._poll()

    def polled_state(self) -> str:
        # a poll already on its way when the WebSocket went live still lands: it feeds the same
        # meter, but the source is the WebSocket's now
        return "connected" if self.ws_live else "polling"

    def request(self) -> tuple[str, str, Mapping[str, str], bytes | None]:
        headers = {"Accept": "application/json"}
        if self.options.gen == 1:
            headers.update(auth_headers(self.options.username if self.options.password else None,
                                        self.options.password, None))
        elif self._challenge is not None and self.options.password is not None:
            self._nc += 1
            uri = urlsplit(self.url).path
            headers["Authorization"] = digest_header("GET", uri, self._challenge, USER, self.options.password,
                                                     self._nc, os.urandom(8).hex())
        return "GET", self.url, headers, None

    def challenged(self, result: HttpResult) -> bool:
        if self.options.password is None or self.options.gen == 1:
            return False
        header = result.headers.get("www-authenticate", "")
        scheme, params = parse_challenge(header)
        if scheme != "digest" or "nonce" not in params:
            return False
        stale = self._challenge is not None and params.get("nonce") != self._challenge.get("nonce")
        first = self._challenge is None
        self._challenge, self._nc = params, 0
        return first or stale

    def take(self, result: HttpResult) -> Reading | None:
        status = decode_document(result.body)
        if not isinstance(status, dict):
            raise ValueProblem("Shelly.GetStatus did not answer an object")
        self.status = status
        return self._serve()

    def _serve(self) -> Reading | None:
        read = gen1_reading_of if self.options.gen == 1 else reading_of
        reading = read(self.status, self.options.channels, wall(self.clock), self.options.invert,
                       self.options.max_power)
        return reading if self.meter.update(reading) else None

    # -- the WebSocket (ClientService's hooks run inside its state machine) -------------------------
    def _ws_attempting(self) -> None:
        if self.state not in ("polling", "failing", "bad credentials"):
            self._set_state("connecting")

    def _ws_failed(self, failure: Failure) -> None:
        if self._stopping or failure.check(defer.CancelledError):
            return
        self.ws_failures += 1
        self._say("websocket", f"cannot connect to {self.ws_url}: {describe(failure)} (polling meanwhile)")

    def _ws_retry(self) -> float:
        if self._stopping:
            return WAIT_WHILE_STOPPING
        if self.ws_auth_failed:
            return self.reconnect_max
        from meteremu.backoff import next_delay

        return next_delay(max(1, self.ws_failures), self.reconnect_min, self.reconnect_max, self.rng)

    def ws_connected(self, proto: SourceWebSocket) -> None:
        if self._stopping:
            proto.dropConnection(abort=True)
            return
        self.ws = proto
        self._arm_watchdog(2 * self.options.timeout + self.options.idle_timeout)

    def ws_opened(self, proto: SourceWebSocket) -> None:
        if proto is not self.ws or self._stopping:
            proto.dropConnection(abort=True)
            return
        self._call(proto)

    def _call(self, proto: SourceWebSocket) -> None:
        self._ws_id += 1
        frame: dict[str, Any] = {"id": self._ws_id, "src": self.src, "method": "Shelly.GetStatus"}
        if self._ws_challenge is not None and self.options.password is not None:
            frame["auth"] = ws_auth(self._ws_challenge, USER, self.options.password, os.urandom(8).hex())
        proto.sendMessage(json.dumps(frame).encode())

    def ws_message(self, proto: SourceWebSocket, payload: bytes) -> None:
        if proto is not self.ws or self._stopping:
            return
        self._arm_watchdog(self.options.idle_timeout)
        try:
            message = decode_document(payload)
        except ValueError:
            self._say("frame", "ignoring a WebSocket frame that is not JSON")
            return
        if not isinstance(message, dict):
            return
        error = message.get("error")
        if isinstance(error, dict) and error.get("code") == 401:
            self._ws_unauthorized(proto, error)
            return
        if "result" in message and isinstance(message.get("result"), dict):
            self.status = dict(message["result"])
            self.ws_auth_failed = False
            self.ws_failures = 0
            self._ws_sample(live=True)
        elif message.get("method") in ("NotifyStatus", "NotifyFullStatus") and self.status:
            params = message.get("params")
            if message["method"] == "NotifyFullStatus" and isinstance(params, dict):
                self.status = {k: v for k, v in params.items() if k != "ts"}
            else:
                merge_status(self.status, params)
            self._ws_sample(live=self.ws_live)

    def _ws_unauthorized(self, proto: SourceWebSocket, error: dict[str, Any]) -> None:
        try:
            challenge = json.loads(str(error.get("message", "")))
        except ValueError:
            challenge = None
        retry = (self.options.password is not None and isinstance(challenge, dict)
                 and self._ws_challenge is None)
        if retry:
            self._ws_challenge = challenge
            self._call(proto)
            return
        self._ws_challenge = None
        self.ws_auth_failed = True
        proto.reason = ("the Shelly refused the password (WebSocket 401)" if self.options.password
                        else "the Shelly wants a password (WebSocket 401): set password")
        proto.sendClose(1000)

    def _ws_sample(self, live: bool) -> None:
        try:
            reading = self._serve()
        except ValueProblem as exc:
            message = f"Shelly {self.ws_url}: {exc}"
            self._failed(message)
            self._emit("failure", message)
            return
        if live and not self.ws_live:
            self.ws_live = True
            self._cancel_timers("_timer")  # the WebSocket feeds the meter now
            self._set_state("connected")
        self.failures_in_row = 0
        self._said.pop("failure", None)
        self._said.pop("websocket", None)
        self._arm_refresh()
        if reading is not None:
            self.ws_samples += 1
            self.samples += 1
            self.meter.details["samples"] = self.samples
            self._emit("sample", reading)

    def _arm_refresh(self) -> None:
        """Ask again over the WebSocket when no push came for ``interval``: the device pushes
        only changes, and a steady value must stay fresh (the answer is a new sample)."""
        self._rearm("_refresh", self.options.interval, self._ws_refresh)

    def _ws_refresh(self) -> None:
        self._refresh = None
        ws = self.ws
        if ws is not None and self.ws_live and not self._stopping:
            self._call(ws)

    def _arm_watchdog(self, seconds: float) -> None:
        self._rearm("_watchdog", seconds, self._idle)

    def _idle(self) -> None:
        self._watchdog = None
        ws = self.ws
        if ws is None or self._stopping:
            return
        ws.reason = f"no message from {self.ws_url} for {self.options.idle_timeout:g} s; reconnecting"
        ws.dropConnection(abort=True)

    def ws_closed(self, proto: SourceWebSocket, code: int | None, reason: str | None) -> None:
        if proto is not self.ws:
            return
        self.ws = None
        self._cancel_timers("_watchdog", "_refresh")
        was_live, self.ws_live = self.ws_live, False
        self._ws_challenge = None
        if self._stopping:
            return
        self.ws_failures += 1
        message = proto.reason or f"Shelly WebSocket closed ({code})"
        if self.ws_auth_failed:
            self._failed(message, down=True)
            self._set_state("bad credentials")
        else:
            self._say("websocket", f"{message} (polling meanwhile)")
        self._emit("failure", message)
        if was_live or self.ws_auth_failed or self._timer is None:
            self._call_later(0.0, self._poll)  # polling takes over at once

