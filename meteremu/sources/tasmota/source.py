"""The Tasmota source's I/O: HTTP polling of ``Status 10``, or the MQTT ``SENSOR`` pushes.

* :class:`TasmotaHTTPSource`: the poll loop of :mod:`meteremu.sources.httppoll`
  on ``http://<host>/cm?cmnd=Status%2010`` (``&user=…&password=…`` when a web
  password is set: Tasmota takes it only in the query, so the URL shown in
  logs and the dashboard leaves the query out).
* :class:`TasmotaMQTTSource`: subscribes ``<prefix>/<topic>/SENSOR`` and
  ``<prefix>/<topic>/LWT`` through :mod:`meteremu.mqttclient` (reconnects
  with backoff, re-subscribes). Every SENSOR message is one sample (its
  arrival time); the meter is *not* kept alive by the connection alone: a
  Tasmota that stops publishing goes stale after ``stale_after`` (3 x the
  TelePeriod by default). ``Offline`` on the LWT marks the meter down; a lost
  broker connection makes it stale; a broker that refuses the login, down.

Each message or answer is read whole by :mod:`.parse` (pure): a refused
value refuses the sample, with the reason in the log.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed

from meteremu.clocks import wall
from meteremu.httpclient import HttpResult
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.mqttclient import MQTTConfigError, ReactorMQTTClient, broker_settings
from meteremu.reading import Reading
from meteremu.sources.common import SourceStatus
from meteremu.sources.httpoptions import shown_url
from meteremu.sources.httppoll import AuthError, PollingSource
from meteremu.sources.jsonfields import DocumentError, ValueProblem
from meteremu.sources.tasmota.options import TasmotaOptions
from meteremu.sources.tasmota.parse import PasswordRefused, read_sensor

log = logger(__name__)


def status_url(options: TasmotaOptions) -> str:
    host, port = options.address()
    netloc = f"[{host}]" if ":" in host else host
    if port != 80:
        netloc += f":{port}"
    query = "cmnd=Status%2010"
    if options.password:
        query = urlencode({"user": options.username, "password": options.password}) + "&" + query
    return f"http://{netloc}/cm?{query}"


class TasmotaHTTPSource(PollingSource):
    """Polls ``Status 10`` (see the module docstring)."""

    type_name = "tasmota"
    label = "Tasmota"

    def __init__(self, meter: Meter, options: TasmotaOptions, reactor: IReactor,
                 clock: IReactorTime | None = None, rng: Callable[[], float] = random.random) -> None:
        super().__init__(meter, reactor, interval=options.period, timeout=options.timeout,
                         reconnect_min=options.reconnect_min, reconnect_max=options.reconnect_max,
                         clock=clock, rng=rng)
        self.options = options
        self.extraction = options.extraction()
        self.url = status_url(options)
        self.meter.details = {"url": shown_url(self.url), "mode": "http", "values": self.extraction.describe(),
                              "connection": self.state}

    def request(self) -> tuple[str, str, Mapping[str, str], bytes | None]:
        return "GET", self.url, {"Accept": "application/json"}, None

    def take(self, result: HttpResult) -> Reading | None:
        try:
            reading = read_sensor(self.extraction, result.body, wall(self.clock))
        except PasswordRefused as exc:
            raise AuthError(str(exc)) from None
        return reading if self.meter.update(reading) else None


class TasmotaMQTTSource(SourceStatus, Service):
    """Takes the ``SENSOR`` pushes (see the module docstring)."""

    type_name = "tasmota"

    def __init__(self, meter: Meter, options: TasmotaOptions, reactor: IReactor,
                 client_factory: Callable[..., Any] = ReactorMQTTClient,
                 rnd: Callable[[], float] = random.random) -> None:
        assert options.broker is not None
        self.meter, self.options, self.reactor = meter, options, reactor
        self.broker = options.broker
        self.client_factory, self.rnd = client_factory, rnd
        self.extraction = options.extraction()
        self.client_id = self.broker.client_id or f"meteremu-{meter.name}-{secrets.token_hex(4)}"
        self.client: Any = None
        self.state = "stopped"
        self.messages = 0
        self.samples = 0
        self.offline = False
        self._said: dict[str, str] = {}
        self.meter.details = {"broker": self.broker.address, "topic": options.sensor_topic, "mode": "mqtt",
                              "values": self.extraction.describe(), "connection": self.state}

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    def startService(self) -> None:
        super().startService()
        try:
            settings = broker_settings(self.broker, self.client_id)
        except MQTTConfigError as exc:
            self._set_state("bad TLS settings")
            message = f"source.broker.{exc}"
            self._say("failure", message, "error")
            self.meter.report_failure(message, down=True)
            return
        self.client = self.client_factory(
            settings, self.reactor, name=f"meter {self.meter.name}: Tasmota MQTT",
            on_connected=self._connected, on_disconnected=self._disconnected,
            on_message=self._message, on_attempt=self._attempt, rnd=self.rnd)
        self.client.subscribe(self.options.sensor_topic, 0)
        self.client.subscribe(self.options.lwt_topic, 0)
        self._set_state("connecting")
        self.client.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._set_state("stopped")
        client, self.client = self.client, None
        if client is None:
            return succeed(None)
        return client.stop()

    # -- the client's callbacks (on the reactor thread) -----------------------------------
    def _connected(self) -> None:
        self._set_state("connected")

    def _disconnected(self, reason: str) -> None:
        self._set_state("disconnected")
        self.meter.report_failure(f"MQTT {reason}", down=False)

    def _attempt(self, ok: bool, why: str | None) -> None:
        if ok:
            return
        self._set_state("failing")
        why = why or "connection failed"
        self.meter.report_failure(f"MQTT broker {self.broker.address}: {why}", down=why.startswith("broker refused"))

    def _message(self, topic: str, payload: bytes, retained: bool) -> None:
        if not self.running:
            return
        self.messages += 1
        if topic == self.options.lwt_topic:
            self._availability(payload)
            return
        if topic != self.options.sensor_topic or retained:
            return  # a retained SENSOR is an old sample (Tasmota's SensorRetain)
        try:
            reading = read_sensor(self.extraction, payload, wall(self.reactor))
        except (DocumentError, ValueProblem, PasswordRefused) as exc:
            message = f"Tasmota {self.options.sensor_topic}: {exc}; sample refused"
            self._say("failure", message)
            self.meter.report_failure(message, down=False)
            return
        self._said.pop("failure", None)
        if self.offline:
            return  # kept out until the LWT says Online again
        self.samples += 1
        self.meter.details["samples"] = self.samples
        self.meter.update(reading)

    def _availability(self, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace").strip()
        if text.lower() == "offline":
            self.offline = True
            message = f"{self.options.lwt_topic} says {text!r}"
            self._say("failure", message)
            self.meter.report_failure(message, down=True)
        elif text.lower() == "online" and self.offline:
            self.offline = False
            self._say("failure", f"{self.options.lwt_topic} says {text!r} again", "info")
