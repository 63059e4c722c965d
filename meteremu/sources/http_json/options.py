"""Options of the HTTP JSON source (``source: {type: http_json, …}``). Pure.

Validating them compiles the JSON paths (jsonpath-ng, pure Python) and checks
the CA file with the standard library: no client stack is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from meteremu.configtypes import Duration
from meteremu.sources.httpoptions import auth_errors, timing_errors, tls_errors, url_errors
from meteremu.sources.jsonfields import (
    DEFAULT_MAX_POWER,
    Extraction,
    JsonPath,
    PathError,
    compile_path,
    fields_from,
)
from meteremu.sources.values import (
    layout_errors,
    quantity_fields,
    scale_errors,
    unit_errors,
    value_items,
    value_where,
)


@dataclass(frozen=True)
class JsonValue:
    """Where one value is in the answer, and how it is converted."""

    path: str = field(metadata={"doc": "JSONPath of the value, e.g. $.Body.Data.PowerReal_P_Sum"})
    unit: str | None = field(default=None, metadata={
        "doc": "unit of the number (W, kW, Wh, kWh, V, A, %…); default W, Wh, V, A, Hz; "
               "a unit written in the answer wins"})
    scale: float = field(default=1.0, metadata={"doc": "multiply by this after the unit conversion"})
    invert: bool = field(default=False, metadata={"doc": "multiply by -1 (a value positive on export)"})

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        try:
            compile_path(self.path)
        except PathError as err:
            errors.append(("path", str(err)))
        return errors + scale_errors(self.scale)


ValueSource = str | JsonValue
"""A JSONPath, or a :class:`JsonValue` mapping."""


@dataclass(frozen=True)
@quantity_fields(ValueSource)
class JsonValues:
    """Which path feeds which quantity (the keys of the MQTT source's ``values``)."""

    def items(self) -> list[tuple[str, int, ValueSource]]:
        return value_items(self)

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        for key, index, item in self.items():
            where = value_where(self, key, index)
            if isinstance(item, str):
                try:
                    compile_path(item)
                except PathError as err:
                    errors.append((where, str(err)))
            else:
                errors += unit_errors(key, item.unit, where)
        return errors + layout_errors(self, "path")


def resolve(item: ValueSource) -> tuple[JsonPath, str | None, float, bool]:
    if isinstance(item, str):
        return compile_path(item), None, 1.0, False
    return compile_path(item.path), item.unit, item.scale, item.invert


@dataclass(frozen=True)
class HttpJsonOptions:
    url: str = field(metadata={"doc": "the URL to poll, e.g. http://192.168.1.60/solar_api/v1/GetMeterRealtimeData.cgi"})
    values: JsonValues = field(kw_only=True, metadata={"doc": "which JSONPath feeds which quantity"})
    method: Literal["GET", "POST"] = field(default="GET", metadata={"doc": "HTTP method"})
    headers: dict[str, str] = field(default_factory=dict, repr=False, metadata={
        "doc": "extra request headers (their values are never logged)"})
    body: str | None = field(default=None, repr=False, metadata={"doc": "POST: the request body (sent as is)"})
    content_type: str = field(default="application/json", metadata={"doc": "POST: the body's Content-Type"})
    username: str | None = field(default=None, metadata={"doc": "HTTP basic authentication user"})
    password: str | None = field(default=None, repr=False, metadata={"doc": "HTTP basic authentication password"})
    token: str | None = field(default=None, repr=False, metadata={"doc": "bearer token (Authorization: Bearer …)"})
    verify_ssl: bool = field(default=True, metadata={"doc": "https: false accepts any certificate (a trusted LAN only)"})
    tls_fingerprint: str | None = field(default=None, metadata={
        "doc": "https: SHA-256 of the device certificate to pin (hex, colons allowed)"})
    ca_file: str | None = field(default=None, metadata={"doc": "https: PEM file of the CA to trust instead of the web's"})
    interval: Duration = field(default=1.0, metadata={"doc": "poll period"})
    timeout: Duration = field(default=5.0, metadata={"doc": "whole request timeout"})
    timestamp_path: str | None = field(default=None, metadata={
        "doc": "JSONPath of the sample time (epoch s or ms, ISO 8601); default: each poll is a new sample"})
    invert: bool = field(default=False, metadata={"doc": "multiply grid power by -1 (positive on export)"})
    max_power: float = field(default=DEFAULT_MAX_POWER, metadata={
        "doc": "W: a power value beyond this is refused (catches W read as kW)"})
    reconnect_min: Duration = field(default=1.0, metadata={"doc": "first retry delay after a failure"})
    reconnect_max: Duration = field(default=60.0, metadata={"doc": "longest retry delay"})

    def validate(self) -> list[tuple[str, str]]:
        errors = url_errors("url", self.url) + timing_errors(self) + auth_errors(self)
        errors += tls_errors(self, self.url)
        if self.body is not None and self.method != "POST":
            errors.append(("body", "method: POST (a GET has no body)"))
        for name in self.headers:
            if not name or any(c in name for c in ":\r\n ") or any(c in self.headers[name] for c in "\r\n"):
                errors.append(("headers", f"header names without ':', spaces or line breaks; got {name!r}"))
            elif name.lower() == "authorization" and (self.token or self.username):
                errors.append(("headers", "no Authorization header with token or username (one or the other)"))
        if self.timestamp_path is not None:
            try:
                compile_path(self.timestamp_path)
            except PathError as err:
                errors.append(("timestamp_path", str(err)))
        if not self.max_power > 0 or self.max_power == float("inf"):
            errors.append(("max_power", "a finite power in W greater than 0"))
        return errors

    def extraction(self) -> Extraction:
        """The compiled paths and conversions (options already validated)."""
        return Extraction(fields_from(self.values.items(), resolve), self.invert, self.max_power)

    def timestamp(self) -> JsonPath | None:
        return compile_path(self.timestamp_path) if self.timestamp_path else None


