"""MQTT exporter (``exporters.mqtt``), with optional Home Assistant discovery.

This module only holds the options and the factory, so validating a config
does not import paho; the service lives in ``service.py``, the pure topic and
payload rules in ``topics.py``, the reactor-driven paho client in
``meteremu.mqttclient``. User documentation: docs/exporters.md, "MQTT".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from meteremu.configtypes import Duration
from meteremu.mqttclient import TLSOptions

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
class Options:
    enabled: bool = field(default=True, metadata={"doc": "false keeps the section but publishes nothing"})
    host: str = field(default="localhost", metadata={"doc": "broker host name or IP address"})
    port: int = field(default=1883, metadata={"doc": "broker port (usually 8883 with TLS)"})
    username: str | None = field(default=None, metadata={"doc": "user name, if the broker wants one"})
    password: str | None = field(default=None, repr=False, metadata={
        "doc": 'password; write "${MQTT_PASSWORD}" to keep it out of the file'})
    client_id: str | None = field(default=None, metadata={
        "doc": "MQTT client id; default meteremu-<node_id> (stable, so the broker recognises us)"})
    tls: bool | TLSOptions = field(default=False, metadata={
        "doc": "true (system CAs) or {ca_file, certfile, keyfile, insecure}"})
    keepalive: Duration = field(default=60.0, metadata={"doc": "MQTT keepalive (pings when idle)"})
    connect_timeout: Duration = field(default=5.0, metadata={
        "doc": "how long one connection attempt (TCP, TLS, CONNACK) may take"})
    reconnect_delay: Duration = field(default=1.0, metadata={
        "doc": "first wait before reconnecting; doubles per failure, with jitter"})
    reconnect_max_delay: Duration = field(default=60.0, metadata={"doc": "longest wait between attempts"})
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
        errors: list[tuple[str, str]] = []
        if not 1 <= self.port <= 65535:
            errors.append(("port", f"a port 1-65535; got {self.port}"))
        if self.password is not None and self.username is None:
            errors.append(("password", "a username as well (a password alone is never sent)"))
        for name in ("topic_prefix", "discovery_prefix", "birth_topic"):
            value = getattr(self, name)
            if value is None:
                continue
            problem = _topic_problem(value, "topic")
            if problem:
                errors.append((name, problem))
        if not _NODE_ID.fullmatch(self.node_id):
            errors.append(("node_id", f"letters, digits, '_' or '-' only; got {self.node_id!r}"))
        if self.client_id is not None and not self.client_id:
            errors.append(("client_id", "a non-empty client id (or leave it out)"))
        if not 5 <= self.keepalive <= 65535:
            errors.append(("keepalive", "a duration from 5s to 65535s"))
        if not self.connect_timeout > 0:
            errors.append(("connect_timeout", "a duration above 0"))
        if not self.reconnect_delay > 0:
            errors.append(("reconnect_delay", "a duration above 0"))
        if self.reconnect_max_delay < self.reconnect_delay:
            errors.append(("reconnect_max_delay", "a duration at least reconnect_delay"))
        return errors


def make_exporter(options: Options, meters: Any, reactor: Any, metrics: Any, store: Any) -> Any:
    """The MQTT exporter service (imports paho only now)."""
    from meteremu.exporters.mqtt.service import MQTTExporter

    return MQTTExporter(options, meters, reactor, metrics, store)
