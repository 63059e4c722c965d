"""Options of the Tasmota source (``source: {type: tasmota, …}``). Pure.

Validating them compiles the JSON paths (jsonpath-ng, pure Python): no HTTP
or MQTT client is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as option
from typing import Literal

from meteremu.configtypes import Duration
from meteremu.mqttoptions import BrokerOptions
from meteremu.sources.addresses import host_errors
from meteremu.sources.homewizard.options import host_port
from meteremu.sources.httpoptions import timing_errors
from meteremu.sources.jsonfields import (
    DEFAULT_MAX_POWER,
    Extraction,
    JsonPath,
    PathError,
    compile_path,
    fields_from,
    name_path,
)
from meteremu.sources.mqtt.mapping import topic_problem
from meteremu.sources.values import (
    COUNTER_KEYS,
    layout_errors,
    quantity_fields,
    scale_errors,
    unit_errors,
    value_items,
    value_where,
)

HTTP_INTERVAL = 1.0
TELEPERIOD = 10.0  # Tasmota's shortest TelePeriod


def field_path(text: str) -> JsonPath:
    """``$…`` is a JSONPath; anything else a field name found anywhere (``Power_curr``)."""
    return compile_path(text) if text.strip().startswith("$") else name_path(text.strip())


@dataclass(frozen=True)
class TasmotaValue:
    """One value of the meter script: its field (name or JSONPath) and its conversion."""

    field: str = option(metadata={"doc": "the field's name in the script (Power_curr) or a JSONPath ($.SML.Power_curr)"})
    unit: str | None = option(default=None, metadata={
        "doc": "unit of the number (W, kW, Wh, kWh, V, A, %…); default W, Wh, V, A, Hz"})
    scale: float = option(default=1.0, metadata={"doc": "multiply by this after the unit conversion"})
    invert: bool = option(default=False, metadata={"doc": "multiply by -1 (a value positive on export)"})

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        try:
            field_path(self.field)
        except PathError as err:
            errors.append(("field", str(err)))
        return errors + scale_errors(self.scale)


ValueSource = str | TasmotaValue


@dataclass(frozen=True)
@quantity_fields(ValueSource)
class TasmotaValues:
    """Which script field feeds which quantity (the keys of the MQTT source's ``values``)."""

    def items(self) -> list[tuple[str, int, ValueSource]]:
        return value_items(self)

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        for key, index, item in self.items():
            where = value_where(self, key, index)
            if key in COUNTER_KEYS and (isinstance(item, str) or item.unit is None):
                # SML scripts count in kWh or Wh as their author chose: a guess would be off by 1000.
                errors.append((where, "the counter's unit: {field: …, unit: kWh} (or Wh), as the script counts"))
                continue
            if isinstance(item, str):
                try:
                    field_path(item)
                except PathError as err:
                    errors.append((where, str(err)))
            else:
                errors += unit_errors(key, item.unit, where)
        return errors + layout_errors(self, "field")


def resolve(item: ValueSource) -> tuple[JsonPath, str | None, float, bool]:
    if isinstance(item, str):
        return field_path(item), None, 1.0, False
    return field_path(item.field), item.unit, item.scale, item.invert


@dataclass(frozen=True)
class TasmotaBroker(BrokerOptions):
    """The MQTT broker Tasmota publishes to (the MQTT exporter's keys)."""

    def validate(self) -> list[tuple[str, str]]:
        return self.broker_errors() + self.client_id_errors() + self.timing_errors()


@dataclass(frozen=True)
class TasmotaOptions:
    values: TasmotaValues = option(kw_only=True, metadata={"doc": "which field of the meter script feeds which quantity"})
    mode: Literal["http", "mqtt"] = option(default="http", metadata={
        "doc": "http: poll cm?cmnd=Status 10; mqtt: take the tele/<topic>/SENSOR pushes"})
    host: str | None = option(default=None, metadata={"doc": "http: the Tasmota's address (optionally :port)"})
    username: str = option(default="admin", metadata={"doc": "http: the web user (Tasmota's is admin)"})
    password: str | None = option(default=None, repr=False, metadata={
        "doc": "http: the web password (WebPassword), if one is set"})
    topic: str | None = option(default=None, metadata={"doc": "mqtt: the device's Topic, e.g. tasmota_8C4F2A"})
    prefix: str = option(default="tele", metadata={"doc": "mqtt: the telemetry prefix (Prefix3)"})
    broker: TasmotaBroker | None = option(default=None, metadata={"doc": "mqtt: the broker {host, port, username, …}"})
    interval: Duration | None = option(default=None, metadata={
        "doc": "http: poll period (default 1s); mqtt: the device's TelePeriod (default 10s)"})
    timeout: Duration = option(default=5.0, metadata={"doc": "http: whole request timeout"})
    invert: bool = option(default=False, metadata={"doc": "multiply grid power by -1 (positive on export)"})
    max_power: float = option(default=DEFAULT_MAX_POWER, metadata={
        "doc": "W: a power value beyond this is refused (catches W read as kW)"})
    reconnect_min: Duration = option(default=1.0, metadata={"doc": "http: first retry delay after a failure"})
    reconnect_max: Duration = option(default=60.0, metadata={"doc": "http: longest retry delay"})

    def __post_init__(self) -> None:
        # The meter's default stale_after is 3 x interval: a poll period, or the TelePeriod.
        if self.interval is None:
            object.__setattr__(self, "interval", HTTP_INTERVAL if self.mode == "http" else TELEPERIOD)

    @property
    def period(self) -> float:
        return float(self.interval or (HTTP_INTERVAL if self.mode == "http" else TELEPERIOD))

    def validate(self) -> list[tuple[str, str]]:
        errors = timing_errors(self)
        if not self.max_power > 0 or self.max_power == float("inf"):
            errors.append(("max_power", "a finite power in W greater than 0"))
        if self.mode == "http":
            errors += host_errors(self.host, "the Tasmota's address, e.g. 192.168.1.70")
            for name in ("topic", "broker"):
                if getattr(self, name) is not None:
                    errors.append((name, "mode: mqtt (http polls the device)"))
            return errors
        if self.host is not None or self.password is not None:
            errors.append(("host" if self.host is not None else "password",
                           "mode: http (with mqtt the broker's options are under broker)"))
        if not self.topic:
            errors.append(("topic", "the device's Topic (Configuration > MQTT), e.g. tasmota_8C4F2A"))
        else:
            for topic in (self.sensor_topic, self.lwt_topic):
                problem = topic_problem(topic)
                if problem:
                    errors.append(("topic", problem))
                    break
        if self.broker is None:
            errors.append(("broker", "the MQTT broker Tasmota publishes to, e.g. {host: 192.168.1.2}"))
        return errors

    @property
    def sensor_topic(self) -> str:
        return f"{self.prefix}/{self.topic}/SENSOR"

    @property
    def lwt_topic(self) -> str:
        return f"{self.prefix}/{self.topic}/LWT"

    def address(self) -> tuple[str, int]:
        return host_port(self.host or "", 80)

    def extraction(self) -> Extraction:
        return Extraction(fields_from(self.values.items(), resolve), self.invert, self.max_power)
