"""MQTT exporter (``exporters.mqtt``), with optional Home Assistant discovery.

This module only holds the options and the factory, so validating a config
does not import paho; the service lives in ``service.py``, the pure topic and
payload rules in ``topics.py``, the reactor-driven paho client in
``meteremu.mqttclient``. User documentation: docs/exporters.md, "MQTT".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from meteremu.configtypes import Duration
from meteremu.mqttoptions import BrokerOptions, TLSOptions

if TYPE_CHECKING:  # the services import their client libraries: only when built
    from meteremu.days import DayLedger
    from meteremu.exporters.mqtt.service import MQTTExporter
    from meteremu.exporters.prometheus import Metrics
    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meterset import MeterSet

__all__ = ["Options", "TLSOptions", "make_exporter"]

_NODE_ID = re.compile(r"[A-Za-z0-9_-]+")


def _topic_problem(value: str, what: str) -> str | None:
    if not value:
        return f"a non-empty {what}"
    if any(c in value for c in "+#\x00"):
        return f"a {what} without the wildcards + and #; got {value!r}"
    if value.startswith("/") or value.endswith("/") or "//" in value:
        return f"a {what} without empty levels (no leading, trailing or double /); got {value!r}"
    return None


@dataclass(frozen=True)
class Options(BrokerOptions):
    """``exporters.mqtt``: the broker (:class:`~meteremu.mqttoptions.BrokerOptions`) and what to publish."""

    enabled: bool = field(default=True, metadata={"doc": "false keeps the section but publishes nothing"})
    client_id: str | None = field(default=None, metadata={
        "doc": "MQTT client id; default meteremu-<node_id> (stable, so the broker recognises us)"})
    topic_prefix: str = field(default="meters", metadata={
        "doc": "first topic level(s): <prefix>/<source type>/<meter>/<parameter>"})
    qos: Literal[0, 1, 2] = field(default=0, metadata={"doc": "QoS of the value messages"})
    retain: bool = field(default=True, metadata={"doc": "retain the value messages"})
    min_interval: Duration = field(default=5.0, metadata={
        "doc": "publish a meter's changed values at most this often (0: on every reading)"})
    refresh_interval: Duration = field(default=0.0, metadata={
        "doc": "also re-publish unchanged values after this long (0: only changed values)"})
    json_state: bool = field(default=False, metadata={
        "doc": "also publish every value as one JSON object on <prefix>/<source type>/<meter>/state"})
    discovery: bool = field(default=False, metadata={"doc": "publish Home Assistant MQTT discovery configs"})
    discovery_prefix: str = field(default="homeassistant", metadata={
        "doc": "Home Assistant's discovery prefix"})
    birth_topic: str | None = field(default=None, metadata={
        "doc": "where Home Assistant says online when it starts; default <discovery_prefix>/status"})
    node_id: str = field(default="meteremu", metadata={
        "doc": "names this gateway in discovery topics and unique ids; unique per broker"})

    @property
    def ha_birth_topic(self) -> str:
        return self.birth_topic or f"{self.discovery_prefix}/status"

    @property
    def mqtt_client_id(self) -> str:
        return self.client_id or f"meteremu-{self.node_id}"

    def validate(self) -> list[tuple[str, str]]:
        errors = self.broker_errors()
        for name in ("topic_prefix", "discovery_prefix", "birth_topic"):
            value = getattr(self, name)
            if value is None:
                continue
            problem = _topic_problem(value, "topic")
            if problem:
                errors.append((name, problem))
        if not _NODE_ID.fullmatch(self.node_id):
            errors.append(("node_id", f"letters, digits, '_' or '-' only; got {self.node_id!r}"))
        return errors + self.client_id_errors() + self.timing_errors()


def make_exporter(options: Options, meters: MeterSet, reactor: IReactor, metrics: Metrics | None,
                  store: StateStore | None, days: DayLedger | None = None) -> MQTTExporter:
    """The MQTT exporter service (imports paho only now)."""
    from meteremu.exporters.mqtt.service import MQTTExporter

    return MQTTExporter(options, meters, reactor, metrics, store)
