"""The ESPHome source's I/O: aioesphomeapi's APIClient on the reactor's asyncio loop.

What happens when:

* **Connect** (a coroutine on the loop the reactor runs, bridged by
  :func:`meteremu.asyncbridge.as_deferred`): TCP, the Noise handshake with
  ``encryption_key`` (plaintext without one), hello (and the legacy password),
  then the device info and its entity list in one exchange, all within
  ``timeout`` (a reactor timer ends a slow attempt with aioesphomeapi's
  ``force_disconnect``). The configured sensors are bound to entities
  (:func:`.parse.match_entities`) and the states subscribed.
* **A state**: :class:`.parse.SensorStates` turns it into a new Reading once
  every power sensor has a value; ``NaN`` (ESPHome's "no value") and values
  out of range are refused, naming the sensor.
* **Freshness**, judged once a second and at every state: the meter is alive
  while the connection is up and every power sensor sent a value within
  ``max_age``; otherwise it is stale at once (:meth:`Meter.expire`), saying
  which sensor is silent or has no value.
* **Failures**: a refused attempt or a lost connection marks the meter down
  with one sentence (:mod:`.errors`) and is retried with backoff and jitter
  (``reconnect_min`` doubling to ``reconnect_max``); what retrying soon cannot
  fix (a wrong key or password, another device, sensors the device does not
  have) is retried every ``reconnect_max``. A dead connection is noticed by
  aioesphomeapi's pings (``keepalive``), garbage on the wire by its framing:
  both close the connection, which is then handled as lost.
* **Stop**: a clean DisconnectRequest, bounded by ``timeout``.

Secrets: the key and the password go only to APIClient; messages are
rewritten (:func:`.errors.redact`), so neither reaches a log, the meter's
errors or ``/healthz``. aioesphomeapi's own error logging is turned off
(``log_errors=False``): each failure is said here once; its debug logging,
which prints the password, is held at INFO (:func:`quiet_library`).

Events (``when(event)``): the connection states (``connecting``,
``connected``, ``disconnected``, ``failing``, ``bad key``, ``bad password``,
``wrong device``, ``sensors missing``), ``sample`` (a Reading),
``stale`` (the reason) and ``failure`` (the message).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from aioesphomeapi import APIClient, SensorInfo, SensorState
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

import meteremu
from meteremu.asyncbridge import as_deferred
from meteremu.backoff import next_delay
from meteremu.clocks import wall
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.meter import Meter
from meteremu.sources.common import StatefulEvents
from meteremu.sources.esphome.errors import redact, verdict
from meteremu.sources.esphome.options import EsphomeOptions
from meteremu.sources.esphome.parse import Binding, Entity, SensorStates, match_entities

CHECK_INTERVAL = 1.0


def quiet_library() -> None:
    """Keep aioesphomeapi's stdlib logger at INFO or above.

    Its DEBUG lines print every message it sends, the legacy password among
    them (``Sending AuthenticationRequest: password: …``), and plaintext
    frames as hex; a root logger set to DEBUG would pass them on. The client
    reads the level when it is made, so this runs before each one.
    """
    library = logging.getLogger("aioesphomeapi")
    if library.getEffectiveLevel() < logging.INFO:
        library.setLevel(logging.INFO)


class EsphomeSource(StatefulEvents, Service):
    """Feeds a Meter from an ESPHome device's sensors (see the module docstring)."""

    type_name = "esphome"

    def __init__(self, meter: Meter, options: EsphomeOptions, reactor: IReactor,
                 clock: IReactorTime | None = None, rng: Callable[[], float] = random.random) -> None:
        self.meter, self.options, self.reactor = meter, options, reactor
        self.clock: IReactorTime = clock or reactor
        self.rng = rng
        host, port = options.address()
        self.where = f"ESPHome {host}:{port}"
        self.state = "stopped"
        self._said: dict[str, str] = {}
        self._waiters: list[tuple[str, Any]] = []
        self._timer: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None
        self._timed_out = False
        self._stopping = False
        self._client: Any = None
        self._attempt: Deferred[Any] | None = None
        self._tick = LoopingCall(self._check)
        self._tick.clock = self.clock
        self.states: SensorStates | None = None
        self.failures_in_row = 0
        self.attempts = 0
        self.samples = 0
        self.stale_reason: str | None = None
        self._connected_at = 0.0
        self.meter.details = {"address": f"{host}:{port}", "encrypted": options.encryption_key is not None,
                              "connection": self.state}

    # -- lifecycle ---------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._set_state("connecting")
        self._tick.start(min(CHECK_INTERVAL, self.options.max_age / 4), now=False)
        self._call_later(0, self._connect)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stop_running("_timer")
        if self._tick.running:
            self._tick.stop()
        self._cancel_timers("_deadline")
        attempt, self._attempt = self._attempt, None
        client, self._client = self._client, None
        if attempt is not None:
            # aioesphomeapi's own way to end an attempt (cancelling its tasks leaves futures behind
            # whose errors nobody reads); the attempt's callbacks see _stopping and do nothing.
            if client is not None:
                client.force_disconnect()
            attempt.addTimeout(self.options.timeout, self.clock)
            attempt.addErrback(lambda _: None)
            return attempt
        if client is None:
            return succeed(None)
        # A clean DisconnectRequest; a device that does not answer within timeout is dropped.
        d = as_deferred(client.disconnect())
        drop = self.clock.callLater(self.options.timeout, client.force_disconnect)
        d.addErrback(lambda _: client.force_disconnect())
        d.addBoth(lambda _: drop.cancel() if drop.active() else None)
        return d

    # -- one connection attempt ------------------------------------------------------------------
    def _connect(self) -> None:
        self._timer = None
        if self._stopping or self._attempt is not None:
            return
        self.attempts += 1
        if self.state != "connecting":
            self._set_state("connecting")
        quiet_library()
        host, port = self.options.address()
        client = APIClient(host, port, self.options.password, client_info=f"meteremu {meteremu.__version__}",
                           keepalive=self.options.keepalive, noise_psk=self.options.encryption_key,
                           expected_name=self.options.expected_name)
        self._client = client
        self._timed_out = False
        self._rearm("_deadline", self.options.timeout, self._too_slow, client)
        d = as_deferred(self._session(client))
        self._attempt = d
        d.addCallbacks(self._up, self._refused, errbackArgs=(d,), callbackArgs=(d,))

    def _too_slow(self, client: Any) -> None:
        """The whole attempt (TCP, handshake, hello, entity list) took longer than ``timeout``:
        end it the way aioesphomeapi ends one, on the reactor's clock."""
        self._deadline = None
        if client is self._client and self._attempt is not None:
            self._timed_out = True
            client.force_disconnect()

    async def _session(self, client: Any) -> tuple[Any, Any, list[Binding]]:
        try:
            await client.connect(login=self.options.password is not None, log_errors=False)
            info, entities, _ = await client.device_info_and_list_entities()
        except BaseException:
            client.force_disconnect()
            raise
        sensors = [Entity(e.key, e.object_id, e.name, e.unit_of_measurement)
                   for e in entities if isinstance(e, SensorInfo)]
        try:
            return client, info, match_entities(self.options.values, sensors)
        except BaseException:
            client.force_disconnect()
            raise

    def _up(self, result: tuple[Any, Any, list[Binding]], d: Deferred[Any]) -> None:
        if self._attempt is d:
            self._attempt = None
            self._cancel_timers("_deadline")
        client, info, bindings = result
        if self._stopping or client is not self._client:
            client.force_disconnect()
            return
        self.states = SensorStates(bindings, self.options.max_power, self.options.invert, self.options.max_age)
        self._connected_at = self.clock.seconds()
        client.add_connection_closed_callback(lambda event: self._closed(client, event))
        client.subscribe_states(lambda state: self._state(client, state))
        self._said.pop("failure", None)
        self.meter.details.update({
            "device": info.name, "mac": info.mac_address, "esphome_version": info.esphome_version,
            "model": info.model, "sensors": {(f"{b.quantity}[{b.index}]" if b.index else b.quantity):
                                             f"{b.label} ({b.unit})" for b in bindings}})
        self._say("connection", f"connected to {self.where} ({info.name}, ESPHome {info.esphome_version})", "info")
        self._set_state("connected")
        self._check()

    def _refused(self, failure: Failure, d: Deferred[Any]) -> None:
        if self._attempt is d:
            self._attempt = None
            self._cancel_timers("_deadline")
        self._client = None
        if self._stopping:
            return
        exc: BaseException = failure.value if failure.value is not None else RuntimeError("no exception")
        if self._timed_out:
            exc = TimeoutError()
        judged = verdict(exc, self.where, self.options.timeout)
        if judged.unexpected:
            self._say("bug", self._clean(f"unexpected {failure.getErrorMessage()}"), "error")
        self._fail(judged.state, judged.message, judged.permanent)

    # -- while connected ---------------------------------------------------------------------
    def _state(self, client: Any, state: Any) -> None:
        if client is not self._client or self.states is None or self._stopping:
            return
        if not isinstance(state, SensorState):
            return  # a switch's, a binary sensor's (whose key may equal a sensor's: keys hash object_ids)
        outcome = self.states.state(state.key, state.state, state.missing_state, self.clock.seconds(),
                                    wall(self.clock))
        if outcome.refused is not None:
            message = f"{self.where}: {outcome.refused}"
            self._say("value", message)
            self.meter.report_failure(message, down=False)
        if outcome.reading is not None and self.meter.update(outcome.reading):
            if outcome.refused is None:
                self._said.pop("value", None)
            self.failures_in_row = 0  # the device delivers: a later drop starts the backoff anew
            self.samples += 1
            self.meter.details["samples"] = self.samples
            self._emit("sample", outcome.reading)
        self._check()

    def _closed(self, client: Any, event: Any) -> None:
        if client is not self._client:
            return
        self._client = None
        self.states = None
        if self._stopping:
            return
        error: BaseException | None = getattr(event, "error", None)
        if error is None:
            why = f"{self.where} closed the connection"
        else:
            judged = verdict(error, self.where, self.options.timeout)
            # After the handshake, a "key" verdict only means bytes that fit no frame.
            why = judged.message if not judged.permanent else \
                f"{self.where}: protocol error ({type(error).__name__})"
        self._fail("disconnected", f"connection lost: {why}", False)

    def _check(self) -> None:
        """Alive while connected and every power sensor is current; else stale now."""
        if self.state != "connected" or self.states is None:
            return
        now = self.clock.seconds()
        if self.states.pending() and now - self._connected_at <= self.options.max_age:
            return  # the first states are on their way (the meter stays as the last failure left it)
        problem = self.states.problem(now)
        if problem is None:
            if self.meter.latest is not None:
                self.meter.alive()
            if self.stale_reason is not None:
                self._say("stale", f"{self.where}: current again", "info")
                self.meter.details.pop("stale", None)
            self.stale_reason = None
            return
        self.meter.expire()
        self.meter.details["stale"] = problem
        if self.stale_reason is None:  # said when it turns stale, not at each change of reason
            self._say("stale", f"{self.where}: {problem}", "info")
            self._emit("stale", problem)
        self.stale_reason = problem

    # -- failures ----------------------------------------------------------------------------------
    def _clean(self, text: str) -> str:
        return redact(text, (self.options.encryption_key, self.options.password))

    def _fail(self, state: str, message: str, permanent: bool) -> None:
        message = self._clean(message)
        self.failures_in_row += 1
        self.stale_reason = None
        self.meter.details.pop("stale", None)
        self.meter.report_failure(message, down=True)
        self._say("failure", message)
        self._set_state(state)
        self._emit("failure", message)
        delay = self.options.reconnect_max if permanent else next_delay(
            self.failures_in_row, self.options.reconnect_min, self.options.reconnect_max, self.rng)
        self.meter.details["retry_in"] = round(delay, 3)
        self._call_later(delay, self._connect)
