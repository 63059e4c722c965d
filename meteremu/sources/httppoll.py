"""The poll loop of the HTTP sources that answer one request with one sample (http_json, tasmota,
tibber_pulse): one request every ``interval``, failures counted and backed off.

A subclass says what to ask (:meth:`PollingSource.request`) and how to read
the answer (:meth:`PollingSource.take`, pure parsing behind it). The loop:

* one request in flight at a time, bounded as a whole by ``timeout``
  (:mod:`meteremu.httpclient`); the next one ``interval`` after the previous
  one started;
* HTTP 401/403 is a refused password or token: the meter is down at once and
  the next try waits ``reconnect_max``; any other failure (connection, time
  out, another status, an unusable body, a refused value) makes the meter
  stale, three in a row down, and the retries wait ``reconnect_min``
  doubling up to ``reconnect_max`` (with jitter);
* every failure is logged once per distinct message, with its reason and
  never a header, password or the URL's query.

The meter is only ever updated with a Reading built from a whole answer.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from meteremu import failures
from meteremu.backoff import next_delay
from meteremu.failures import Explained
from meteremu.httpclient import HTTPClient, HttpResult
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.sources.common import StatefulEvents
from meteremu.tls import TLSPolicy

log = logger(__name__)

FAILURES_BEFORE_DOWN = 3
MAX_BODY = 1024 * 1024
PROGRAMMING_ERRORS = (TypeError, AttributeError, KeyError, IndexError, AssertionError, ZeroDivisionError)


RETRY = object()
"""What a poll's answer becomes when it was a challenge that was answered: poll again at once."""


class AuthError(Explained):
    """The device refused the credentials."""


class HTTPStatusError(Explained):
    pass


def describe(failure: Failure | BaseException, tls: Any = None) -> str:
    """Why a poll or connection failed: a refused certificate (``tls.problem``) or an
    unusable answer first (shared by the polling sources and HomeWizard)."""
    exc = failures.exception_of(failure)
    problem = getattr(tls, "problem", None)
    if problem and not isinstance(exc, Explained):
        return f"TLS: {problem}"
    if isinstance(exc, ValueError) and not isinstance(exc, Explained):
        return f"unusable answer: {str(exc)[:160]}"
    return failures.describe(exc)


class PollingSource(StatefulEvents, Service, abc.ABC):
    """Polls one HTTP endpoint; ``take`` turns each answer into a Meter update.

    Events for ``when``: a connection state, "sample" or "failure".
    """

    type_name = "http"
    label = "HTTP"  # the device, in messages: "Tasmota poll failed: …"

    def __init__(self, meter: Meter, reactor: IReactor, *, interval: float, timeout: float,
                 reconnect_min: float, reconnect_max: float, tls: TLSPolicy | None = None,
                 clock: IReactorTime | None = None, rng: Callable[[], float] = random.random) -> None:
        self.meter = meter
        self.reactor: IReactor = reactor
        self.clock = clock if clock is not None else reactor
        self.rng = rng
        self.interval = interval
        self.timeout = timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.tls = tls
        self.state = "stopped"
        self.failures_in_row = 0
        self.samples = 0
        self.polls = 0
        self.auth_failed = False
        self._stopping = True
        self._timer = None
        self.http: HTTPClient | None = None
        self._inflight: Deferred[Any] | None = None
        self._retried = False  # this poll already answered a challenge
        self._said: dict[str, str] = {}
        self._waiters: list[tuple[str, Deferred[Any]]] = []

    # -- what a subclass says ----------------------------------------------------------------
    @abc.abstractmethod
    def request(self) -> tuple[str, str, Mapping[str, str], bytes | None]:
        """``(method, url, headers, body)`` of the next poll."""

    def challenged(self, result: HttpResult) -> bool:
        """A 401 that asks for credentials this source can now give (digest): poll again at once.

        Returns False when the 401 is a refusal (the default).
        """
        return False

    @abc.abstractmethod
    def take(self, result: HttpResult) -> Any:
        """Read a 200 answer and update the meter; ``ValueError`` when it is unusable.

        Returns what ``when("sample")`` waiters get (a Reading, or None for a
        repeat that did not update the meter).
        """

    # -- lifecycle -----------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.http = HTTPClient(self.reactor, self.timeout, self.tls, clock=self.clock)
        self._call_later(0.0, self._poll)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stop_running("_timer")
        if self._inflight is not None and not self._inflight.called:
            self._inflight.cancel()
        http, self.http = self.http, None
        waits = [http.close()] if http is not None else []
        return defer.DeferredList(waits, consumeErrors=True)

    # -- status --------------------------------------------------------------------------------
    def _backoff(self) -> float:
        if self.auth_failed:
            return self.reconnect_max
        return next_delay(self.failures_in_row, self.reconnect_min, self.reconnect_max, self.rng)

    def _failed(self, message: str, down: bool = False) -> None:
        self.failures_in_row += 1
        down = down or self.failures_in_row >= FAILURES_BEFORE_DOWN
        self.meter.report_failure(message, down=down)
        self._say("failure", message)

    def polled_state(self) -> str:
        """The state after a successful poll (a source with a push channel may be fed by that)."""
        return "polling"

    # -- the poll --------------------------------------------------------------------------------
    def _poll(self) -> None:
        self._timer = None
        if self._stopping or self.http is None:
            return
        method, url, headers, body = self.request()
        started = self.clock.seconds()
        self.polls += 1
        d = self.http.request(method, url, headers, data=body, limit=MAX_BODY)

        def got(result: HttpResult) -> Any:
            if result.status == 401 and not self._retried and self.challenged(result):
                self._retried = True
                return RETRY
            if result.status in (401, 403):
                raise AuthError(f"the device refused the credentials (HTTP {result.status})")
            if result.status != 200:
                raise HTTPStatusError(f"HTTP {result.status}")
            return self.take(result)

        d.addCallback(got)
        self._inflight = d

        def ok(sample: Any) -> None:
            self._inflight = None
            if sample is RETRY:
                self._call_later(0.0, self._poll)
                return
            self._retried = False
            self.failures_in_row = 0
            self.auth_failed = False
            self._said.pop("failure", None)
            if sample is not None:
                self.samples += 1
            if isinstance(self.meter.details, dict):
                self.meter.details["samples"] = self.samples
            self._call_later(max(0.0, self.interval - (self.clock.seconds() - started)), self._poll)
            self._set_state(self.polled_state())
            self._emit("sample", sample)

        def failed(failure: Failure) -> None:
            self._inflight = None
            self._retried = False
            if self._stopping:
                return
            if failure.check(*PROGRAMMING_ERRORS):  # a bug: the traceback is worth a log line
                log.failure(f"{self.label}: unexpected error taking a sample", failure)
            if failure.check(AuthError):
                self.auth_failed = True
                message = f"{self.label}: {describe(failure)}"
                self._failed(message, down=True)
                state = "bad credentials"
            else:
                message = f"{self.label} poll failed: {describe(failure, self.tls)}"
                self._failed(message)
                state = "failing"
            self._call_later(self._backoff(), self._poll)
            self._set_state(state)
            self._emit("failure", message)

        d.addCallbacks(ok, failed)
