"""Options of the ESPHome source (``source: {type: esphome, …}``). Pure: aioesphomeapi is not loaded.

The encryption key is checked here for its shape only (base64 of 32 bytes,
as ESPHome's ``api: encryption: key:`` is), so a typo is a config error
naming the key path, never a connection that fails later. Neither the key
nor the password ever appears in an error, a log line or ``repr``.
"""

from __future__ import annotations

import binascii
import importlib.util
import math
from dataclasses import dataclass, field

from meteremu.configtypes import Duration
from meteremu.sources.addresses import host_errors, port_errors
from meteremu.sources.homewizard.options import host_port
from meteremu.sources.jsonfields import DEFAULT_MAX_POWER
from meteremu.sources.values import (
    layout_errors,
    quantity_fields,
    scale_errors,
    unit_errors,
    value_items,
    value_where,
)

DEFAULT_PORT = 6053
KEY_BYTES = 32


def aioesphomeapi_problem() -> str | None:
    """Why the ESPHome source cannot run here (aioesphomeapi missing), found without importing it."""
    if importlib.util.find_spec("aioesphomeapi") is None:
        return "aioesphomeapi installed first (an extra: pip install 'meteremu[esphome]')"
    return None


def key_problem(key: str) -> str | None:
    """What is wrong with an encryption key, without repeating any of it (it is a secret)."""
    text = "".join(key.split())
    try:
        raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return "the device's API encryption key: base64 of 32 bytes (44 characters ending in =), as in its YAML"
    if len(raw) != KEY_BYTES:
        return f"the device's API encryption key: base64 of 32 bytes; this one decodes to {len(raw)} bytes"
    return None


@dataclass(frozen=True)
class EsphomeSensor:
    """One sensor entity, and how its state is read."""

    sensor: str = field(metadata={"doc": "the sensor's object_id (grid_power) or its name (Grid Power)"})
    unit: str | None = field(default=None, metadata={
        "doc": "unit of its states (W, kW, Wh, kWh, V, A…); default: the unit the device declares for it"})
    scale: float = field(default=1.0, metadata={"doc": "multiply by this after the unit conversion"})
    invert: bool = field(default=False, metadata={"doc": "multiply by -1 (a value that is positive on export)"})

    def validate(self) -> list[tuple[str, str]]:
        errors = scale_errors(self.scale)
        if not self.sensor.strip():
            errors.append(("sensor", "a sensor's object_id or name"))
        return errors


SensorSource = str | EsphomeSensor
"""A sensor's object_id or name, or an :class:`EsphomeSensor` mapping."""


def sensor_of(item: SensorSource) -> EsphomeSensor:
    return item if isinstance(item, EsphomeSensor) else EsphomeSensor(sensor=item)


@dataclass(frozen=True)
@quantity_fields(SensorSource)
class EsphomeValues:
    """Which sensor entity feeds which quantity (the keys of the MQTT source's ``values``)."""

    def items(self) -> list[tuple[str, int, EsphomeSensor]]:
        return [(key, index, sensor_of(item)) for key, index, item in value_items(self)]

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        for key, index, item in value_items(self):
            where = value_where(self, key, index)
            if isinstance(item, str):
                if not item.strip():
                    errors.append((where, "a sensor's object_id or name"))
            else:  # the mapping checks its own sensor and scale
                errors += unit_errors(key, item.unit, where)
        return errors + layout_errors(self, "sensor")


@dataclass(frozen=True)
class EsphomeOptions:
    host: str = field(metadata={"doc": "the ESPHome device's address, e.g. 192.168.1.30 or meter.local (optionally :port)"})
    values: EsphomeValues = field(metadata={"doc": "which sensor feeds which quantity"})
    port: int = field(default=DEFAULT_PORT, metadata={"doc": "native API port (if host has none)"})
    encryption_key: str | None = field(default=None, repr=False, metadata={
        "doc": "the device's api: encryption: key (base64); without it the device must allow plaintext"})
    password: str | None = field(default=None, repr=False, metadata={
        "doc": "the legacy api: password (devices from before encryption; ESPHome has deprecated it)"})
    expected_name: str | None = field(default=None, metadata={
        "doc": "refuse a device with another name (a DHCP address that moved to another device)"})
    max_age: Duration = field(default=30.0, metadata={
        "doc": "the meter is stale when a power sensor sent no state for this long (its update_interval x 3)"})
    keepalive: Duration = field(default=15.0, metadata={
        "doc": "ping interval; a silently dead connection is dropped after 4.5 x this"})
    timeout: Duration = field(default=10.0, metadata={"doc": "the connection and the entity list must be done within this"})
    invert: bool = field(default=False, metadata={"doc": "multiply power by -1 (a meter measuring the other way)"})
    max_power: float = field(default=DEFAULT_MAX_POWER, metadata={"doc": "W: a power value beyond this is refused"})
    reconnect_min: Duration = field(default=1.0, metadata={"doc": "first retry delay after a failure"})
    reconnect_max: Duration = field(default=60.0, metadata={"doc": "longest retry delay"})

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        errors += host_errors(self.host, "the device's address, e.g. 192.168.1.30")
        errors += port_errors(self.port)
        if self.encryption_key is not None:
            problem = key_problem(self.encryption_key)
            if problem:
                errors.append(("encryption_key", problem))
        if self.password is not None and not self.password:
            errors.append(("password", "the api password, or leave it out"))
        if self.expected_name is not None and not self.expected_name.strip():
            errors.append(("expected_name", "the device's name (esphome: name:), or leave it out"))
        for name in ("max_age", "keepalive", "timeout", "reconnect_min", "reconnect_max"):
            if not 0 < getattr(self, name) < math.inf:
                errors.append((name, "a duration greater than 0"))
        if self.reconnect_max < self.reconnect_min:
            errors.append(("reconnect_max", "at least reconnect_min"))
        if not self.max_power > 0 or self.max_power == math.inf:
            errors.append(("max_power", "a finite power in W greater than 0"))
        problem = aioesphomeapi_problem()
        if problem:
            errors.append(("type", problem))
        return errors

    def address(self) -> tuple[str, int]:
        return host_port(self.host, self.port)
