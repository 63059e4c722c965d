"""Configuration of one emulated everHome EcoTracker (``devices: - type: everhome_ecotracker``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from meteremu.configtypes import Duration
from meteremu.devices.shelly.options import FallbackPolicy, MdnsOptions

# everHome's OUI: the EcoFlow app is reported not to find an EcoTracker
# announced under another vendor's MAC (batteries.md §3.3).
EVERHOME_OUI = "B43A45"


@dataclass(frozen=True)
class Options:
    meter: str | None = field(default=None, metadata={
        "doc": "name of the meter to serve (default: the first meter)"})
    mac: str = field(default="auto", metadata={
        "doc": "12 hex digits, or 'auto' (B4:3A:45 + 3 random bytes, kept in the store)"})
    serial: str | None = field(default=None, metadata={
        "doc": "TXT serial (default: the MAC in lower case)"})
    http_port: int | None = field(default=None, metadata={
        "doc": "HTTP port of GET /v1/json (default: server.http_port; batteries expect 80)"})
    average_window: Duration = field(default=60.0, metadata={
        "doc": "powerAvg is the mean of the readings of this last window"})
    phases: bool = field(default=True, metadata={"doc": "serve powerPhase1-3"})
    on_stale: Literal["error", "hold"] | FallbackPolicy = field(default="error", metadata={
        "doc": "while the meter is stale or down: error (HTTP 503), hold, or {fallback: W}"})
    mdns: bool | MdnsOptions = field(default=False, metadata={
        "doc": "announce _everhome._tcp over mDNS"})

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.mac != "auto" and not re.fullmatch(r"[0-9A-Fa-f]{12}", self.mac.replace(":", "")):
            errors.append(("mac", f"expected 12 hex digits or 'auto'; got {self.mac!r}"))
        if self.serial is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.serial):
            errors.append(("serial", "expected 1-64 letters, digits, '-', '_' or '.'"))
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            errors.append(("http_port", f"expected a port 0-65535; got {self.http_port}"))
        if not 0 < self.average_window <= 86400:
            errors.append(("average_window", "expected a duration above 0 and at most 1 day"))
        if isinstance(self.mdns, MdnsOptions) and self.mdns.port is not None and not 0 < self.mdns.port <= 65535:
            errors.append(("mdns.port", f"expected a port 1-65535; got {self.mdns.port}"))
        return errors
