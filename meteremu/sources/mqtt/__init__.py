"""MQTT input source (``source: {type: mqtt, …}``): meter values from a broker.

Two layouts, as the peers offer them (AstraMeter ``TOPICS``/``JSON_PATHS``,
uni-meter's MQTT channels, OpenDTU's power meter values):

* one topic per value, the payload being the number
  (``values: {a_power: shellies/em3/emeter/0/power, …}``);
* one JSON topic for all values, a JSON path per value
  (``topic: tele/smlreader/SENSOR``, ``values: {power: "$.SML.Power"}``);

and any mix of the two. Units, scale and sign are set per value; an
availability topic (``offline`` → meter down) is respected.

This module holds the options and the factory only, so validating a config
does not import paho; the pure part is ``mapping.py``, the service
``source.py``, the reactor-driven paho client ``meteremu.mqttclient``. User
documentation: docs/sources.md, "MQTT".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from meteremu.configtypes import Duration
from meteremu.mqttoptions import BrokerOptions, TLSOptions
from meteremu.sources.mqtt.mapping import PathError, parse_path, topic_problem
from meteremu.sources.values import (
    DEFAULT_UNIT,
    KEY_KIND,
    Smoothing,
    layout_errors,
    quantity_fields,
    unit_factor,
    value_items,
    value_where,
)

if TYPE_CHECKING:  # the service imports paho: only when built
    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter
    from meteremu.sources.mqtt.source import MQTTSource

__all__ = ["PUSH", "MQTTSourceOptions", "Options", "Smoothing", "TLSOptions", "Value", "Values", "make_source"]

PUSH = True  # freshness follows the broker connection: default stale_after 60 s (design.md §4)


@dataclass(frozen=True)
class Value:
    """Where one value comes from, and how it is converted."""

    topic: str | None = field(default=None, metadata={
        "doc": "the topic it is published on; default: the source's topic"})
    path: str | None = field(default=None, metadata={
        "doc": "JSON path in the payload ($.a.b[0].c, $..name, a.b.0.c); none: the payload is the number"})
    unit: str | None = field(default=None, metadata={
        "doc": "unit of the published number (W, kW, Wh, kWh, V, mA, %…); default W, Wh, V, A, Hz"})
    scale: float = field(default=1.0, metadata={"doc": "multiply by this after the unit conversion"})
    invert: bool = field(default=False, metadata={"doc": "multiply by -1 (a value that is positive on export)"})

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        if self.topic is not None:
            problem = topic_problem(self.topic)
            if problem:
                errors.append(("topic", problem))
        if self.path is not None:
            try:
                parse_path(self.path)
            except PathError as err:
                errors.append(("path", str(err)))
        if not (self.scale == self.scale and abs(self.scale) != float("inf")):
            errors.append(("scale", "a finite number"))
        return errors


ValueSource = str | Value
"""A topic (its payload is the number), a JSON path starting with ``$`` in the
source's ``topic``, or a :class:`Value` mapping."""


@dataclass(frozen=True)
@quantity_fields(ValueSource)
class Values:
    """Which value feeds which quantity; the keys of the Home Assistant source's ``entities``
    (:data:`meteremu.sources.values.KEYS`).

    Power is signed (+ import, − export) unless ``*_power_export`` is given:
    then the matching power value is the import and the export (a positive
    number) is subtracted.
    """

    def items(self) -> list[tuple[str, int, ValueSource]]:
        """``(key, index, value)`` for every configured value."""
        return value_items(self)

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        for key, index, item in self.items():
            where = value_where(self, key, index)
            if isinstance(item, str):
                if item.startswith("$"):
                    try:
                        parse_path(item)
                    except PathError as err:
                        errors.append((where, str(err)))
                else:
                    problem = topic_problem(item)
                    if problem:
                        errors.append((where, problem))
                continue
            kind = KEY_KIND[key]
            try:
                unit_factor(kind, item.unit if item.unit is not None else DEFAULT_UNIT[kind])
            except ValueError as err:
                errors.append((f"{where}.unit", str(err)))
        return errors + layout_errors(self, "value")


@dataclass(frozen=True)
class MQTTSourceOptions(BrokerOptions):
    """``source: {type: mqtt}``: the broker (:class:`~meteremu.mqttoptions.BrokerOptions`) and the values."""

    values: Values = field(kw_only=True, metadata={"doc": "which topic / JSON path feeds which quantity"})
    client_id: str | None = field(default=None, metadata={
        "doc": "MQTT client id; default meteremu-<meter>-<random>, new each start"})
    keepalive: Duration = field(default=30.0, metadata={
        "doc": "MQTT keepalive; a silently dead connection is noticed within about twice this"})
    topic: str | None = field(default=None, metadata={
        "doc": "the topic of values that name only a JSON path (one JSON topic for everything)"})
    qos: Literal[0, 1, 2] = field(default=0, metadata={"doc": "QoS of the subscriptions"})
    timestamp_path: str | None = field(default=None, metadata={
        "doc": "JSON path of the sample time in JSON payloads (epoch s or ms, ISO 8601); default: arrival time"})
    availability_topic: str | None = field(default=None, metadata={
        "doc": "where the publisher says online/offline (its Last Will); offline marks the meter down"})
    availability_path: str | None = field(default=None, metadata={
        "doc": "JSON path of the state in availability payloads ({\"state\": \"offline\"})"})
    payload_available: str = field(default="online", metadata={"doc": "availability payload meaning up"})
    payload_not_available: str = field(default="offline", metadata={"doc": "availability payload meaning down"})
    invert: bool = field(default=False, metadata={"doc": "multiply grid power by -1 (positive on export)"})
    smoothing: Smoothing | None = field(default=None, metadata={"doc": "{window: N} or {alpha: a}"})
    debounce: Duration = field(default=0.0, metadata={
        "doc": "wait this long after a value for the others of the same burst before serving (0: at once)"})
    expire_after: Duration = field(default=0.0, metadata={
        "doc": "a power value without a new sample for this long marks the meter down (0: never)"})

    def validate(self) -> list[tuple[str, str]]:
        errors = self.broker_errors() + self.client_id_errors()
        for name in ("topic", "availability_topic"):
            value = getattr(self, name)
            if value is not None:
                problem = topic_problem(value)
                if problem:
                    errors.append((name, problem))
        for name in ("timestamp_path", "availability_path"):
            value = getattr(self, name)
            if value is not None:
                try:
                    parse_path(value)
                except PathError as err:
                    errors.append((name, str(err)))
        if self.availability_path is not None and self.availability_topic is None:
            errors.append(("availability_path", "availability_topic as well"))
        if self.payload_available.strip().lower() == self.payload_not_available.strip().lower():
            errors.append(("payload_not_available", "a payload different from payload_available"))
        if not self.payload_not_available.strip():
            errors.append(("payload_not_available", "a non-empty payload"))
        for key, index, item in self.values.items():
            topic = item.topic if isinstance(item, Value) else (None if item.startswith("$") else item)
            if topic is None and self.topic is None:
                where = key if not isinstance(getattr(self.values, key), tuple) else f"{key}[{index}]"
                errors.append((f"values.{where}", "a topic (in the value, or the source's topic: "
                                                  "a value written as $path is read from the source's topic)"))
        errors += self.timing_errors()
        if self.debounce > 10:
            errors.append(("debounce", "a duration of at most 10s"))
        return errors


Options = MQTTSourceOptions


def make_source(meter: Meter, options: MQTTSourceOptions, reactor: IReactor,
                store: StateStore | None = None) -> MQTTSource:
    """The MQTT source service (imports paho only now)."""
    from meteremu.sources.mqtt.source import MQTTSource

    return MQTTSource(meter, options, reactor)
