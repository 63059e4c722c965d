"""Configuration of the Home Assistant source (``source: {type: homeassistant, …}``).

Pure: dataclasses the generic config validator builds, plus their semantic
checks. The token is a secret: it is kept out of ``repr()`` so that no error
message, log line or debug dump that prints the options can show it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Literal
from urllib.parse import urlsplit

from meteremu.configtypes import Duration
from meteremu.sources.values import Smoothing, has_power_key, power_key_errors, quantity_fields

ENTITY_ID = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+$")
CIRCUIT_NAME = re.compile(r"^[a-z0-9_]+$")


@dataclass(frozen=True)
@quantity_fields(str)
class Entities:
    """Which Home Assistant entity feeds which quantity (all optional).

    The keys are those of :data:`meteremu.sources.values.KEYS` (shared with the
    MQTT source's ``values``). Power is signed (+ import, − export) unless
    ``*_power_export`` is given: then the matching power entity is read as
    import and the export entity (a positive number) is subtracted, as with
    DSMR's separate ``power_consumption`` / ``power_production`` sensors.
    """

    def as_dict(self) -> dict[str, str | tuple[str, ...]]:
        """The configured keys only: ``{key: entity_id or (entity_id, …)}``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        configured = self.as_dict()
        for key, value in configured.items():
            for entity in (value,) if isinstance(value, str) else value:
                if not ENTITY_ID.match(entity):
                    errors.append((key, f"an entity id like sensor.grid_power; got {entity!r}"))
        errors += power_key_errors(configured, "entity")
        if configured and not has_power_key(configured):
            errors.append(("power", "a power entity (power or a_power…) when entities are given"))
        return errors


@dataclass(frozen=True)
class HomeAssistantOptions:
    url: str = field(metadata={"doc": "Home Assistant base URL, e.g. http://homeassistant.local:8123"})
    token: str = field(repr=False, metadata={"doc": "long-lived access token (a secret)"})
    mode: Literal["websocket", "poll"] = field(default="websocket", metadata={
        "doc": "websocket: push via subscribe_entities; poll: REST fallback"})
    interval: Duration = field(default=2.0, metadata={"doc": "poll mode: time between REST polls"})
    entities: Entities | None = field(default=None, metadata={
        "doc": "entity per quantity; omitted: auto-discovery"})
    circuits: dict[str, str] | Literal["auto"] | None = field(default=None, metadata={
        "doc": "extra power entities {name: entity_id}, or auto; default auto only with discovery"})
    invert: bool = field(default=False, metadata={"doc": "multiply power by -1 (sensor positive on export)"})
    smoothing: Smoothing | None = field(default=None, metadata={"doc": "{window: N} or {alpha: a}"})
    timeout: Duration = field(default=10.0, metadata={"doc": "whole-request / handshake timeout"})
    ping_interval: Duration = field(default=20.0, metadata={"doc": "app-level WebSocket ping period"})
    ping_timeout: Duration = field(default=10.0, metadata={"doc": "reconnect when no pong within this"})
    reconnect_min: Duration = field(default=1.0, metadata={"doc": "first reconnect delay"})
    reconnect_max: Duration = field(default=60.0, metadata={"doc": "longest reconnect delay"})
    websocket_url: str | None = field(default=None, metadata={
        "doc": "override, e.g. ws://supervisor/core/websocket for an add-on"})

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            errors.append(("url", "an http:// or https:// URL with a host"))
        elif parts.username or parts.password:
            errors.append(("url", "a URL without user:password (use token)"))
        if not self.token.strip():
            errors.append(("token", "a long-lived access token (not empty)"))
        if self.websocket_url is not None:
            ws = urlsplit(self.websocket_url)
            if ws.scheme not in ("ws", "wss") or not ws.hostname:
                errors.append(("websocket_url", "a ws:// or wss:// URL with a host"))
        for name in ("interval", "timeout", "ping_interval", "ping_timeout", "reconnect_min"):
            if not getattr(self, name) > 0:
                errors.append((name, "a duration greater than 0"))
        if self.reconnect_max < self.reconnect_min:
            errors.append(("reconnect_max", "a duration not shorter than reconnect_min"))
        if isinstance(self.circuits, dict):
            for name, entity in self.circuits.items():
                if not CIRCUIT_NAME.match(name):
                    errors.append((f"circuits.{name}", "a circuit name of a-z, 0-9 and _"))
                elif not ENTITY_ID.match(entity):
                    errors.append((f"circuits.{name}", f"an entity id like sensor.power_hvac; got {entity!r}"))
        return errors
