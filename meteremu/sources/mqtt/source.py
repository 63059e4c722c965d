"""The MQTT input source service: one broker connection feeding one Meter.

What happens when:

* **Start**: the TLS files are loaded (a bad one marks the meter down with
  the reason; no connection is tried), every value topic and the
  availability topic are subscribed, and the connection is opened in the
  background (``meteremu.mqttclient``: never blocks the reactor, reconnects
  with backoff and jitter, re-subscribes after every reconnect).
* **A message**: :class:`~meteremu.sources.mqtt.mapping.Combiner` turns it
  into an outcome; a new Reading goes to the Meter at once (or after
  ``debounce``, with the values of the whole burst), ``unavailable``, an
  expired value or ``offline`` on the availability topic mark the meter down.
* **Freshness** (design.md §4, push source): while the connection is up and
  every power value is there and available, the meter is called alive on
  every message and once a second, so a steady value that is never
  re-published stays fresh. A lost connection is a soft failure (the meter
  goes stale after ``stale_after``); a silently dead one is noticed by the
  keepalive within about twice ``keepalive``. A broker that refuses the
  login marks the meter down.
* **Stop**: a clean DISCONNECT, bounded by ``mqttclient.STOP_TIMEOUT``.

Secrets: the password goes only to paho (``BrokerSettings`` keeps it out of
``repr``); logs, ``meter.details`` and failure messages never contain it.
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall

from meteremu.clocks import wall
from meteremu.interfaces import IReactor, StateStore
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.mqttclient import (
    BrokerSettings,
    MQTTConfigError,
    ReactorMQTTClient,
    broker_settings,
)
from meteremu.reading import Reading
from meteremu.sources.common import SourceStatus
from meteremu.sources.mqtt import MQTTSourceOptions
from meteremu.sources.mqtt.mapping import Combiner, Outcome, Smoother, layout_from_options

log = logger(__name__)

HEARTBEAT_INTERVAL = 1.0


class MQTTSource(SourceStatus, Service):
    """Feeds a Meter from MQTT messages (see the module docstring)."""

    type_name = "mqtt"

    def __init__(self, meter: Meter, options: MQTTSourceOptions, reactor: IReactor,
                 client_factory: Callable[..., Any] = ReactorMQTTClient,
                 rnd: Callable[[], float] = random.random) -> None:
        self.meter, self.options, self.reactor = meter, options, reactor
        self.client_factory, self.rnd = client_factory, rnd
        self.layout = layout_from_options(options)
        self.combiner = Combiner(self.layout, Smoother.from_options(options.smoothing),
                                 expire_after=options.expire_after)
        self.client_id = options.client_id or f"meteremu-{meter.name}-{secrets.token_hex(4)}"
        self.client: Any = None
        self.state = "stopped"
        self.messages = 0
        self._pending: Reading | None = None
        self._flush_call: Any = None
        self._tick = LoopingCall(self._check)
        self._tick.clock = reactor
        self._said: dict[str, str] = {}
        self._address = options.address
        self._details()

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    # -- lifecycle -------------------------------------------------------------------
    def _settings(self) -> BrokerSettings:
        settings = broker_settings(self.options, self.client_id)
        if self.options.insecure:
            log.warn("meter {meter}: source.tls.insecure: the broker's certificate and host name "
                     "are not checked", meter=self.meter.name)
        return settings

    def startService(self) -> None:
        super().startService()
        try:
            settings = self._settings()
        except MQTTConfigError as exc:
            self._set_state("bad TLS settings")
            message = f"source.{exc}"
            log.error("meter {meter}: {text}", meter=self.meter.name, text=message)
            self.meter.report_failure(message, down=True)
            return
        self.client = self.client_factory(
            settings, self.reactor, name=f"meter {self.meter.name}: MQTT source",
            on_connected=self._connected, on_disconnected=self._disconnected,
            on_message=self._message, on_attempt=self._attempt, rnd=self.rnd)
        for topic in self.layout.topics():
            self.client.subscribe(topic, self.options.qos)
        self._tick.start(HEARTBEAT_INTERVAL, now=False)
        self._set_state("connecting")
        log.info("meter {meter}: MQTT source on {address}: {mapping}", meter=self.meter.name,
                 address=settings.address, mapping=json.dumps(self.layout.describe(), sort_keys=True))
        self.client.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._set_state("stopped")
        if self._tick.running:
            self._tick.stop()
        self._cancel_flush()
        client, self.client = self.client, None
        if client is None:
            return succeed(None)
        return client.stop()

    # -- status ---------------------------------------------------------------------------
    def _details(self) -> None:
        """What /healthz can show about this source (no secrets)."""
        self.meter.details = {"broker": self._address, "client_id": self.client_id,
                              "connection": self.state, "mapping": self.layout.describe()}

    # -- the client's callbacks ---------------------------------------------------------
    def _connected(self) -> None:
        self._set_state("connected")
        self._heartbeat()

    def _disconnected(self, reason: str) -> None:
        self._set_state("disconnected")
        self.meter.report_failure(f"MQTT {reason}", down=False)

    def _attempt(self, ok: bool, why: str | None) -> None:
        if ok:
            return
        self._set_state("failing")
        why = why or "connection failed"
        refused = why.startswith("broker refused")  # bad credentials or client id: no point hoping
        self.meter.report_failure(f"MQTT broker {self._address}: {why}", down=refused)

    def _message(self, topic: str, payload: bytes, retained: bool) -> None:
        if not self.running:
            return
        self.messages += 1
        self._handle(self.combiner.message(topic, payload, retained, self.reactor.seconds(), wall(self.reactor)))
        self._heartbeat()

    # -- outcomes -----------------------------------------------------------------------
    def _handle(self, outcome: Outcome) -> None:
        for warning in outcome.warnings:
            log.warn("meter {meter}: {text}", meter=self.meter.name, text=warning)
        if outcome.down is not None:
            self._cancel_flush()
            self.meter.report_failure(outcome.down, down=True)
            self._say("failure", outcome.down)
            return
        if outcome.reading is not None:
            self._said.pop("failure", None)
            self._said.pop("waiting", None)
            if self.options.debounce > 0:
                self._pending = outcome.reading
                if self._flush_call is None:
                    self._flush_call = self.reactor.callLater(self.options.debounce, self._flush)
            else:
                self.meter.update(outcome.reading)
        elif outcome.up:
            self._say("failure", f"{self.layout.availability_topic} says available again", "info")
        elif outcome.waiting:
            self._say("waiting", "waiting for a value from " + ", ".join(outcome.waiting), "info")

    def _flush(self) -> None:
        self._flush_call = None
        reading, self._pending = self._pending, None
        if reading is not None and self.running:
            self.meter.update(reading)

    def _cancel_flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._pending = None

    def _heartbeat(self) -> None:
        """The connection is up and the values are there: the meter is alive."""
        if self.connected and self.meter.latest is not None and self.combiner.healthy(self.reactor.seconds()):
            self.meter.alive()

    def _check(self) -> None:
        """Once a second: expiry, then the heartbeat."""
        expiry = self.combiner.expiry(self.reactor.seconds())
        if expiry is not None and self.combiner.ready:
            if self.meter.down_reason != expiry:
                self._cancel_flush()
                self.meter.report_failure(expiry, down=True)
                self._say("failure", expiry)
            return
        self._heartbeat()


def make_source(meter: Meter, options: MQTTSourceOptions, reactor: IReactor,
                store: StateStore | None = None) -> MQTTSource:
    return MQTTSource(meter, options, reactor)
