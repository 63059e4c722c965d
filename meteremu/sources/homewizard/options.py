"""Options of the HomeWizard P1 source (``source: {type: homewizard, …}``). Pure.

Validating them loads no client library: the CA file is checked with the
standard library (:func:`meteremu.tls.check_ca_file`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meteremu.configtypes import Duration
from meteremu.sources.addresses import host_errors
from meteremu.tls import check_ca_file, parse_fingerprint

MIN_IDLE_TIMEOUT = 30.0


@dataclass(frozen=True)
class HomeWizardOptions:
    host: str = field(metadata={"doc": "address of the P1 meter, e.g. 192.168.1.50 (optionally :port)"})
    api: Literal["v1", "v2"] = field(default="v1", metadata={
        "doc": "v1: http /api/v1/data (no auth); v2: https + token (firmware 6.00+)"})
    mode: Literal["websocket", "poll"] = field(default="websocket", metadata={
        "doc": "v2 only: push over wss://host/api/ws, or poll /api/measurement"})
    interval: Duration = field(default=1.0, metadata={
        "doc": "poll period; with the WebSocket the meter's telegram period (1s DSMR 5, 10s DSMR 4)"})
    token: str | None = field(default=None, repr=False, metadata={
        "doc": "v2 bearer token (32 hex digits) from POST /api/user after pressing the button"})
    verify_ssl: bool = field(default=True, metadata={
        "doc": "v2: false accepts any certificate (a trusted LAN only)"})
    tls_fingerprint: str | None = field(default=None, metadata={
        "doc": "v2: SHA-256 of the device certificate to pin (hex, colons allowed)"})
    ca_file: str | None = field(default=None, metadata={
        "doc": "v2: PEM file of the HomeWizard CA to verify the device certificate against"})
    tls_name: str | None = field(default=None, metadata={
        "doc": "v2 with ca_file: the name in the certificate, e.g. appliance/p1dongle/5c2fafaabbcc"})
    timeout: Duration = field(default=5.0, metadata={"doc": "whole request / handshake timeout"})
    idle_timeout: Duration | None = field(default=None, metadata={
        "doc": "WebSocket: reconnect when no message came for this long; default max(3 x interval, 30s)"})
    timestamps: Literal["meter", "arrival"] = field(default="meter", metadata={
        "doc": "v2: the measurement's own timestamp, or the arrival time"})
    timezone: str | None = field(default=None, metadata={
        "doc": "v2: zone of the device's local timestamps, e.g. Europe/Amsterdam (default: this host's)"})
    reconnect_min: Duration = field(default=1.0, metadata={"doc": "first retry delay after a failure"})
    reconnect_max: Duration = field(default=60.0, metadata={"doc": "longest retry delay"})

    def idle(self) -> float:
        return self.idle_timeout if self.idle_timeout is not None else max(3 * self.interval, MIN_IDLE_TIMEOUT)

    def tz(self) -> Any:
        return ZoneInfo(self.timezone) if self.timezone else None

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        errors += host_errors(self.host, "an address or host name, e.g. 192.168.1.50")
        for name in ("interval", "timeout", "reconnect_min", "reconnect_max"):
            if not getattr(self, name) > 0:
                errors.append((name, "a duration greater than 0"))
        if self.idle_timeout is not None and not self.idle_timeout > self.interval:
            errors.append(("idle_timeout", "a duration longer than interval"))
        if self.timezone:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                errors.append(("timezone", f"an IANA time zone like Europe/Amsterdam; got {self.timezone!r}"))
        if self.api == "v1":
            for name in ("token", "tls_fingerprint", "ca_file", "tls_name"):
                if getattr(self, name):
                    errors.append((name, "api: v2 (the v1 API has no TLS and no token)"))
            return errors
        if not self.token:
            errors.append(("token", "the v2 API token (POST /api/user after pressing the button; "
                                    "see docs/sources.md)"))
        if self.tls_fingerprint is not None:
            try:
                parse_fingerprint(self.tls_fingerprint)
            except ValueError:
                errors.append(("tls_fingerprint", "a SHA-256 fingerprint: 64 hex digits, colons allowed"))
        chosen = [n for n, v in (("tls_fingerprint", self.tls_fingerprint), ("ca_file", self.ca_file),
                                 ("verify_ssl", not self.verify_ssl)) if v]
        if len(chosen) > 1:
            errors.append((chosen[1], "one of tls_fingerprint, ca_file or verify_ssl: false"))
        elif not chosen:
            errors.append(("tls_fingerprint", "a way to trust the device certificate: tls_fingerprint "
                                              "(pin it), ca_file (the HomeWizard CA) or verify_ssl: false"))
        if self.tls_name and not self.ca_file:
            errors.append(("tls_name", "ca_file as well (the name is checked against the CA-signed certificate)"))
        if self.ca_file is not None:
            try:
                check_ca_file(self.ca_file)
            except (OSError, ValueError) as exc:
                errors.append(("ca_file", f"a readable PEM file with a certificate ({exc})"))
        return errors


def host_port(host: str, default: int) -> tuple[str, int]:
    """``"192.168.1.50"``, ``"p1.local:8443"`` or ``"[fe80::1]:443"`` → (host, port)."""
    text = host.strip()
    if text.startswith("["):
        name, _, rest = text[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else default
    if text.count(":") == 1:
        name, _, port = text.partition(":")
        if port.isdigit():
            return name, int(port)
    return text, default
