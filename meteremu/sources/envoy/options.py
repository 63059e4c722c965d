"""Options of the Envoy source (``source: {type: envoy, ...}``).

Secrets (``token``, ``password``, ``digest_password``) are kept out of the
dataclass ``repr`` so that dumping the config never prints them; write them
as ``${ENV_VAR}`` in the YAML file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from meteremu.configtypes import Duration
from meteremu.tls import parse_fingerprint as normalise_fingerprint

ENLIGHTEN_URL = "https://enlighten.enphaseenergy.com"
ENTREZ_URL = "https://entrez.enphaseenergy.com"



@dataclass(frozen=True)
class EnvoyOptions:
    url: str | None = field(default=None, metadata={
        "doc": "base URL of the Envoy, e.g. https://envoy.local or https://192.168.1.100"})
    host: str | None = field(default=None, metadata={
        "doc": "shorthand for url: https://<host> (firmware < 7 falls back to http)"})
    interval: Duration = field(default=2.0, metadata={"doc": "fast grid poll period"})
    timeout: Duration = field(default=15.0, metadata={
        "doc": "limit on a whole Envoy request (connect, headers and body)"})
    fast_path: Literal["readings", "production", "livedata"] = field(default="readings", metadata={
        "doc": "where grid power comes from: /ivp/meters/readings (falls back to "
               "/production.json?details=1), production.json only, or /ivp/livedata/status"})
    totals_interval: Duration = field(default=60.0, metadata={
        "doc": "period of the production/consumption totals (extra values)"})
    inverters: bool = field(default=False, metadata={"doc": "poll per-inverter watts"})
    inverters_interval: Duration = field(default=300.0, metadata={"doc": "period of the inverter poll"})
    inverter_tags: dict[str, dict[str, str]] = field(default_factory=dict, metadata={
        "doc": "labels per inverter serial, e.g. {'482101234567': {array: south}}"})
    token: str | None = field(default=None, repr=False, metadata={
        "doc": "a JWT for firmware >= 7 (owner token from entrez.enphaseenergy.com)"})
    username: str | None = field(default=None, metadata={"doc": "Enlighten e-mail, to fetch tokens"})
    password: str | None = field(default=None, repr=False, metadata={"doc": "Enlighten password"})
    serial: str | None = field(default=None, metadata={
        "doc": "Envoy serial for the token (default: the one /info reports)"})
    digest_username: Literal["installer", "envoy"] = field(default="installer", metadata={
        "doc": "firmware < 7: Digest user for protected endpoints"})
    digest_password: str | None = field(default=None, repr=False, metadata={
        "doc": "firmware < 7: Digest password (default: derived from the serial)"})
    verify_ssl: bool = field(default=True, metadata={
        "doc": "false: accept the Envoy's self-signed certificate without checking it"})
    tls_fingerprint: str | None = field(default=None, metadata={
        "doc": "SHA-256 fingerprint of the Envoy's certificate to pin (hex, colons allowed)"})
    enlighten_url: str = field(default=ENLIGHTEN_URL, metadata={"doc": "Enlighten login service"})
    entrez_url: str = field(default=ENTREZ_URL, metadata={"doc": "Entrez token service"})
    cloud_ca_file: str | None = field(default=None, metadata={
        "doc": "PEM file of CA certificates trusted for the cloud (default: the system's)"})
    cloud_timeout: Duration = field(default=30.0, metadata={"doc": "limit on a whole cloud request"})
    backoff_max: Duration = field(default=60.0, metadata={
        "doc": "longest wait between attempts while the Envoy does not answer"})

    # -- derived --------------------------------------------------------------------

    def base_url(self) -> str:
        """``scheme://host[:port]`` without a trailing slash or path."""
        raw = self.url if self.url else f"https://{self.host}"
        parts = urlsplit(raw.strip())
        return f"{parts.scheme.lower()}://{parts.netloc}"

    def explicit_port(self) -> bool:
        return urlsplit(self.base_url()).port is not None

    def fingerprint(self) -> bytes | None:
        return normalise_fingerprint(self.tls_fingerprint) if self.tls_fingerprint else None

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        if (self.url is None) == (self.host is None):
            errors.append(("url", "either url (https://envoy.local) or host (envoy.local), not both"))
        elif self.url is not None:
            parts = urlsplit(self.url.strip())
            if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
                errors.append(("url", f"an http:// or https:// URL with a host; got {self.url!r}"))
            elif parts.path not in ("", "/") or parts.query:
                errors.append(("url", "a base URL without a path, e.g. https://envoy.local"))
        elif self.host is not None:
            if not self.host.strip() or "/" in self.host:
                errors.append(("host", f"a host name or address, e.g. envoy.local; got {self.host!r}"))
        for name in ("interval", "timeout", "cloud_timeout", "backoff_max"):
            if not getattr(self, name) > 0:
                errors.append((name, "a duration greater than 0"))
        if self.totals_interval < self.interval:
            errors.append(("totals_interval", "a duration at least as long as interval"))
        if self.inverters_interval < self.interval:
            errors.append(("inverters_interval", "a duration at least as long as interval"))
        if bool(self.username) != bool(self.password):
            errors.append(("password" if self.username else "username",
                           "username and password together (Enlighten credentials)"))
        if self.tls_fingerprint is not None:
            try:
                normalise_fingerprint(self.tls_fingerprint)
            except ValueError:
                errors.append(("tls_fingerprint", "a SHA-256 fingerprint: 64 hex digits, colons allowed"))
            if not self.verify_ssl:
                errors.append(("verify_ssl", "either tls_fingerprint (pin) or verify_ssl: false, not both"))
        for name in ("enlighten_url", "entrez_url"):
            parts = urlsplit(getattr(self, name))
            if parts.scheme != "https" or not parts.hostname:
                errors.append((name, "an https:// URL (cloud calls always verify TLS)"))
        if self.cloud_ca_file is not None and not os.path.isfile(self.cloud_ca_file):
            errors.append(("cloud_ca_file", f"a readable PEM file; {self.cloud_ca_file!r} does not exist"))
        return errors
