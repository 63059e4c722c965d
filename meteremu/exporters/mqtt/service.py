"""The MQTT exporter service: follows the meters and publishes through one broker connection.

What happens when:

* **Start**: the TLS files are loaded (a bad file fails ``ready``: the process
  stops with a clear message); the connection is then opened in the background
  (an unreachable broker never fails or delays the start; it is retried with
  backoff, see ``meteremu.mqttclient``).
* **Connected** (first time and after every reconnect): ``<prefix>/status``
  ``online`` (retained; the Last Will says ``offline``), topics of meters that
  are gone (remembered in the state store) are cleared, then every meter's
  availability, discovery configs and all current values are published.
* **A reading**: the meter's changed values are published at most every
  ``min_interval`` (a reading inside the interval schedules one publish at its
  end, with the latest values). Availability follows the meter's freshness,
  checked every second.
* **Home Assistant says online** on its birth topic: after a short random delay
  the discovery configs and availability are re-published, one second later all
  values.
* **A meter is removed** (hot reload): its retained topics (discovery configs,
  values, availability) are cleared with empty retained messages.
* **Every second**: availability changes are published; with
  ``refresh_interval``, values unchanged for that long are published again.
* **Stop**: ``offline`` on the status and availability topics (QoS 1, waited
  for), then a clean DISCONNECT.

Nothing here ever waits for the broker on the reactor thread: publishing only
queues bytes, and while the socket is backed up (more than ``max_backlog``
unsent messages) value updates are skipped and counted, not queued.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall

from meteremu.exporters.mqtt import Options
from meteremu.exporters.mqtt.topics import (
    OFFLINE,
    ONLINE,
    ChangeTracker,
    Layout,
    Param,
    RateLimit,
    availability,
    format_value,
    json_state,
    meter_values,
)
from meteremu.exporters.prometheus import Metrics
from meteremu.interfaces import IReactor, Values
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.mqttclient import (
    BrokerSettings,
    Message,
    MQTTConfigError,
    ReactorMQTTClient,
    broker_settings,
)
from meteremu.reading import Reading

log = logger(__name__)

STORE_KEY = "mqtt:retained"
"""State-store key: ``{"<source type>/<meter>": [retained topics]}``, to clear gone meters' topics."""

AVAILABILITY_INTERVAL = 1.0


class MQTTStartError(Exception):
    """The MQTT exporter cannot start as configured (bad TLS file…)."""


class _Instruments:
    def __init__(self, registry: CollectorRegistry, connected: Callable[[], float]) -> None:
        self.connected = Gauge("meteremu_mqtt_connected", "1 while the MQTT exporter is connected to its broker",
                               registry=registry)
        self.connected.set_function(connected)
        self.published = Counter("meteremu_mqtt_published", "MQTT messages handed to the broker connection",
                                 ["kind"], registry=registry)
        self.dropped = Counter("meteremu_mqtt_dropped",
                               "MQTT value updates not published (socket backlog, paho queue full)",
                               ["reason"], registry=registry)
        self.attempts = Counter("meteremu_mqtt_connection_attempts", "MQTT connection attempts by result",
                                ["result"], registry=registry)
        self.births = Counter("meteremu_mqtt_ha_births",
                              "Home Assistant birth messages answered with a discovery re-publish",
                              registry=registry)


class _MeterState:
    def __init__(self, meter: Meter, min_interval: float, retained: list[str]) -> None:
        self.meter = meter
        self.key = f"{meter.source_type}/{meter.name}"
        self.tracker = ChangeTracker()
        self.limit = RateLimit(min_interval)
        self.call: Any = None
        self.availability: str | None = None
        self.announced: set[str] = set()
        self.retained: set[str] = set(retained)
        self.listener: Callable[[Meter, Reading], None] = lambda _meter, _reading: None


class MQTTExporter(Service):
    name = "mqtt"
    birth_delay = (0.5, 1.5)
    """Random wait (s) before answering Home Assistant's birth message (let it subscribe first)."""
    birth_values_delay = 1.0
    """Then this long (s) before re-sending the values, once HA has subscribed to the state topics."""
    max_backlog = 2000

    def __init__(self, options: Options, meters: MeterSet, reactor: IReactor, metrics: Metrics | None = None,
                 store: Values | None = None, rnd: random.Random | None = None) -> None:
        self.options, self.meters, self.reactor, self.store = options, meters, reactor, store
        self.rnd = rnd or random.Random()
        self.ready: Deferred[None] = Deferred()
        self.layout = Layout(options.topic_prefix, options.discovery_prefix, options.node_id, options.qos)
        self.client: ReactorMQTTClient | None = None
        self._states: dict[str, _MeterState] = {}
        saved = store.get(STORE_KEY) if store is not None else None
        self._store_topics: dict[str, list[str]] = (
            {str(k): [str(t) for t in v] for k, v in saved.items() if isinstance(v, list)}
            if isinstance(saved, dict) else {})
        self._unsubscribe: Callable[[], None] | None = None
        self._tick = LoopingCall(self._check_availability)
        self._tick.clock = reactor
        self._birth_call: Any = None
        self._values_call: Any = None
        registry = metrics.registry if metrics is not None else CollectorRegistry()
        self.instruments = _Instruments(registry, lambda: 1.0 if self.connected else 0.0)

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    # -- service ------------------------------------------------------------------------
    def _settings(self) -> BrokerSettings:
        settings = broker_settings(self.options, self.options.mqtt_client_id,
                                   will=Message(self.layout.status_topic, OFFLINE, 1, True))
        if self.options.insecure:
            log.warn("exporters.mqtt.tls.insecure: the broker's certificate and host name are not checked")
        return settings

    def startService(self) -> None:
        super().startService()
        try:
            settings = self._settings()
        except MQTTConfigError as exc:
            self.ready.errback(MQTTStartError(f"exporters.mqtt.{exc}"))
            return
        self.client = ReactorMQTTClient(
            settings, self.reactor, name="MQTT exporter", on_connected=self._on_connected,
            on_message=self._on_message, on_attempt=self._on_attempt)
        if self.options.discovery:
            self.client.subscribe(self.options.ha_birth_topic, 0)
        self._unsubscribe = self.meters.subscribe(self._added, self._removed)
        self._tick.start(AVAILABILITY_INTERVAL, now=False)
        log.info("MQTT exporter: publishing to {address} under {prefix}/{discovery}",
                 address=settings.address, prefix=self.options.topic_prefix,
                 discovery=f" with Home Assistant discovery under {self.options.discovery_prefix}/"
                 if self.options.discovery else "")
        self.client.start()
        self.ready.callback(None)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._tick.running:
            self._tick.stop()
        for call in (self._birth_call, self._values_call):
            if call is not None and call.active():
                call.cancel()
        self._birth_call = self._values_call = None
        final = [Message(self.layout.status_topic, OFFLINE, 1, True)]
        for state in self._states.values():
            state.meter.remove_listener(state.listener)
            if state.call is not None and state.call.active():
                state.call.cancel()
            state.call = None
            final.append(Message(self.layout.availability_topic(state.meter), OFFLINE, 1, True))
        self._states.clear()
        if self.client is None:
            return succeed(None)
        return self.client.stop(final)

    # -- meters come and go ---------------------------------------------------------------
    def _added(self, meter: Meter) -> None:
        key = f"{meter.source_type}/{meter.name}"
        state = _MeterState(meter, self.options.min_interval, self._store_topics.get(key, []))
        state.listener = lambda _meter, _reading: self._on_reading(state)
        self._states[meter.name] = state
        meter.add_listener(state.listener)
        if self.connected:
            self._publish_meter(state, force=True)

    def _removed(self, meter: Meter) -> None:
        state = self._states.get(meter.name)
        if state is None or state.meter is not meter:
            return
        del self._states[meter.name]
        meter.remove_listener(state.listener)
        if state.call is not None and state.call.active():
            state.call.cancel()
        state.call = None
        if self.connected:
            log.info("MQTT: meter {meter} removed; clearing its {n} retained topics",
                     meter=meter.name, n=len(state.retained))
            self._clear(state.key, state.retained)
        # Not connected: the topics stay in the store and are cleared on the next connect.

    # -- connection -------------------------------------------------------------------------
    def _on_attempt(self, ok: bool, why: str | None) -> None:
        self.instruments.attempts.labels("ok" if ok else "failed").inc()

    def _on_connected(self) -> None:
        self._send("status", self.layout.status_topic, ONLINE, 1, True)
        current = {state.key for state in self._states.values()}
        for key in sorted(set(self._store_topics) - current):
            log.info("MQTT: clearing the retained topics of meter {key}, which is gone", key=key)
            self._clear(key, set(self._store_topics[key]))
        for state in self._states.values():
            state.availability = None
            state.announced.clear()
            state.tracker.clear()
            self._publish_meter(state, force=True)

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if not (self.options.discovery and topic == self.options.ha_birth_topic):
            return
        if retained or payload.strip().lower() != ONLINE.encode():
            return  # a retained birth is old news: everything was published on connect
        self.instruments.births.inc()
        delay = self.rnd.uniform(*self.birth_delay)
        log.info("Home Assistant is online: re-publishing discovery in {delay:.1f} s", delay=delay)
        for call in (self._birth_call, self._values_call):
            if call is not None and call.active():
                call.cancel()
        self._values_call = None
        self._birth_call = self.reactor.callLater(delay, self._answer_birth)

    def _answer_birth(self) -> None:
        self._birth_call = None
        if not self.connected:
            return
        for state in self._states.values():
            state.availability = None
            state.announced.clear()
            self._publish_availability(state)
            self._publish_configs(state, meter_values(state.meter))
        self._values_call = self.reactor.callLater(self.birth_values_delay, self._republish_values)

    def _republish_values(self) -> None:
        self._values_call = None
        if self.connected:
            for state in self._states.values():
                self._publish_meter(state, force=True)

    # -- publishing -------------------------------------------------------------------------
    def _send(self, kind: str, topic: str, payload: str | bytes, qos: int, retain: bool) -> bool:
        assert self.client is not None
        ok = self.client.publish(Message(topic, payload, qos, retain))
        if ok:
            self.instruments.published.labels(kind).inc()
        else:
            self.instruments.dropped.labels("queue_full").inc()
        return ok

    def _remember(self, state: _MeterState, topic: str) -> None:
        if topic in state.retained:
            return
        state.retained.add(topic)
        self._store_topics[state.key] = sorted(state.retained)
        self._save()

    def _save(self) -> None:
        if self.store is not None:
            self.store.put(STORE_KEY, {k: list(v) for k, v in sorted(self._store_topics.items())})

    def _clear(self, key: str, topics: set[str]) -> None:
        """Delete retained messages: discovery configs first, so Home Assistant drops the entities."""
        discovery = f"{self.options.discovery_prefix}/"
        for topic in sorted(topics, key=lambda t: (not t.startswith(discovery), t)):
            self._send("clear", topic, b"", 1, True)
        self._store_topics.pop(key, None)
        self._save()

    def _publish_availability(self, state: _MeterState, force: bool = False) -> None:
        value = availability(state.meter.freshness())
        if value == state.availability and not force:
            return
        topic = self.layout.availability_topic(state.meter)
        if self._send("availability", topic, value, 1, True):
            state.availability = value
            self._remember(state, topic)

    def _publish_configs(self, state: _MeterState, values: list[tuple[Param, float | str]]) -> None:
        if not self.options.discovery:
            return
        meter = state.meter
        for param, _ in values:
            if param.key in state.announced:
                continue
            topic = self.layout.config_topic(meter, param.key)
            if self._send("discovery", topic, self.layout.config_payload(meter, param), 1, True):
                state.announced.add(param.key)
                self._remember(state, topic)

    def _publish_meter(self, state: _MeterState, force: bool = False) -> None:
        """Availability, new discovery configs, then changed (or, forced, all) values."""
        now = self.reactor.seconds()
        self._publish_availability(state)
        meter, reading = state.meter, state.meter.latest
        if reading is None:
            return
        state.limit.mark(now)
        values = meter_values(meter)
        self._publish_configs(state, values)
        o = self.options
        payloads = {self.layout.value_topic(meter, p.key): format_value(v, p.decimals) for p, v in values}
        changed = state.tracker.changes(payloads, now, force=force, refresh=o.refresh_interval)
        for topic, payload in changed:
            if not self._send("value", topic, payload, o.qos, o.retain):
                state.tracker.forget(topic)
            elif o.retain:
                self._remember(state, topic)
        if o.json_state and (changed or force):
            topic = self.layout.state_topic(meter)
            if self._send("state", topic, json_state(reading, values), o.qos, o.retain) and o.retain:
                self._remember(state, topic)

    def _on_reading(self, state: _MeterState) -> None:
        if state.call is not None or not self.running:
            return
        delay = state.limit.delay(self.reactor.seconds())
        state.call = self.reactor.callLater(delay, self._flush, state)

    def _flush(self, state: _MeterState) -> None:
        state.call = None
        if self._states.get(state.meter.name) is not state or not self.connected:
            return  # gone, or not connected: the next connect publishes everything
        assert self.client is not None
        if self.client.backlog() > self.max_backlog:
            self.instruments.dropped.labels("backlog").inc()
            state.call = self.reactor.callLater(max(self.options.min_interval, 1.0), self._flush, state)
            return
        self._publish_meter(state)

    def _check_availability(self) -> None:
        """Every second: availability changes, and values due for a refresh (``refresh_interval``)."""
        if not self.connected:
            return
        now = self.reactor.seconds()
        refresh = self.options.refresh_interval
        for state in list(self._states.values()):
            try:
                self._publish_availability(state)
                if (refresh > 0 and state.call is None and state.limit.last is not None
                        and now - state.limit.last >= refresh):
                    self._flush(state)
            except Exception:  # noqa: BLE001 - keep the LoopingCall alive
                log.failure("MQTT: periodic check failed for {meter}", meter=state.meter.name)
