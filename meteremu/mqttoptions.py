"""What an MQTT connection is configured with: the options both the MQTT
exporter and the MQTT source take, and the settings a client is built from. Pure.

Kept apart from :mod:`meteremu.mqttclient` so that validating a config loads
neither paho nor Twisted's network machinery.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meteremu.backoff import next_delay
from meteremu.configtypes import Duration


class MQTTConfigError(Exception):
    """The MQTT settings cannot work (unreadable CA or certificate file…)."""


@dataclass(frozen=True)
class TLSOptions:
    """``tls:`` of an MQTT connection (``tls: true`` means all defaults)."""

    ca_file: str | None = field(default=None, metadata={
        "doc": "PEM file with the CA certificate(s) that signed the broker's certificate; default: the system's CAs"})
    certfile: str | None = field(default=None, metadata={
        "doc": "client certificate (PEM) for brokers that require one"})
    keyfile: str | None = field(default=None, metadata={
        "doc": "private key of the client certificate (PEM); default: read from certfile"})
    insecure: bool = field(default=False, metadata={
        "doc": "accept any broker certificate and host name (encrypted but not authenticated; trusted LAN only)"})

    def validate(self) -> list[tuple[str, str]]:
        if self.keyfile and not self.certfile:
            return [("keyfile", "a certfile as well (keyfile is the key of the client certificate)")]
        return []


@dataclass(frozen=True)
class BrokerOptions:
    """The broker connection options shared by the MQTT exporter and the MQTT source.

    Each extends this with its own keys (and, for ``client_id`` and
    ``keepalive``, its own default and doc); the YAML keys are the same for both.
    """

    host: str = field(default="localhost", metadata={"doc": "broker host name or IP address"})
    port: int = field(default=1883, metadata={"doc": "broker port (usually 8883 with TLS)"})
    username: str | None = field(default=None, metadata={"doc": "user name, if the broker wants one"})
    password: str | None = field(default=None, repr=False, metadata={
        "doc": 'password; write "${MQTT_PASSWORD}" to keep it out of the file'})
    client_id: str | None = field(default=None, metadata={"doc": "MQTT client id"})
    tls: bool | TLSOptions = field(default=False, metadata={
        "doc": "true (system CAs) or {ca_file, certfile, keyfile, insecure}"})
    keepalive: Duration = field(default=60.0, metadata={"doc": "MQTT keepalive (pings when idle)"})
    connect_timeout: Duration = field(default=5.0, metadata={
        "doc": "how long one connection attempt (TCP, TLS, CONNACK) may take"})
    reconnect_delay: Duration = field(default=1.0, metadata={
        "doc": "first wait before reconnecting; doubles per failure, with jitter"})
    reconnect_max_delay: Duration = field(default=60.0, metadata={"doc": "longest wait between attempts"})

    @property
    def tls_options(self) -> TLSOptions | None:
        """``tls`` as TLSOptions (``true``: all defaults), or None without TLS."""
        if not self.tls:
            return None
        return self.tls if isinstance(self.tls, TLSOptions) else TLSOptions()

    @property
    def insecure(self) -> bool:
        """TLS without checking the broker's certificate (worth a warning at start)."""
        tls = self.tls_options
        return tls is not None and tls.insecure

    @property
    def address(self) -> str:
        return broker_address(self.host, self.port, bool(self.tls))

    def broker_errors(self) -> list[tuple[str, str]]:
        """validate() errors of the address and the credentials."""
        errors: list[tuple[str, str]] = []
        if not 1 <= self.port <= 65535:
            errors.append(("port", f"a port 1-65535; got {self.port}"))
        if self.password is not None and self.username is None:
            errors.append(("password", "a username as well (a password alone is never sent)"))
        return errors

    def client_id_errors(self) -> list[tuple[str, str]]:
        if self.client_id is not None and not self.client_id:
            return [("client_id", "a non-empty client id (or leave it out)")]
        return []

    def timing_errors(self) -> list[tuple[str, str]]:
        """validate() errors of keepalive, connect timeout and reconnect delays."""
        errors: list[tuple[str, str]] = []
        if not 5 <= self.keepalive <= 65535:
            errors.append(("keepalive", "a duration from 5s to 65535s"))
        if not self.connect_timeout > 0:
            errors.append(("connect_timeout", "a duration above 0"))
        if not self.reconnect_delay > 0:
            errors.append(("reconnect_delay", "a duration above 0"))
        if self.reconnect_max_delay < self.reconnect_delay:
            errors.append(("reconnect_max_delay", "a duration at least reconnect_delay"))
        return errors


def broker_address(host: str, port: int, tls: bool) -> str:
    """``mqtt(s)://host:port`` for logs and status (an IPv6 host in brackets)."""
    host = f"[{host}]" if ":" in host else host
    return f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes | str
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True)
class BrokerSettings:
    """How to reach the broker (built by the user of the client from its options)."""

    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: Any = None
    """An ``IOpenSSLClientConnectionCreator`` for TLS (:func:`meteremu.mqttclient.broker_settings`), or None."""
    keepalive: int = 60
    connect_timeout: float = 5.0
    reconnect_delay: float = 1.0
    reconnect_max_delay: float = 60.0
    will: Message | None = None
    max_queued: int = 1000

    @property
    def address(self) -> str:
        return broker_address(self.host, self.port, self.tls is not None)


def backoff_delay(failures: int, first: float, cap: float, rnd: Callable[[], float] = random.random) -> float:
    """Wait before attempt number ``failures + 1``: ``first * 2**failures`` capped, times 0.5-1.0."""
    return next_delay(failures + 1, first, cap, rnd)
