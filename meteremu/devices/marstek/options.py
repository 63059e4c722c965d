"""Configuration of an emulated Marstek CT002 / CT003 (``devices: - type: marstek_ct002``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from meteremu.control.options import ControlOptions
from meteremu.devices.shelly.options import FallbackPolicy

DEFAULT_PORT = 12345


@dataclass(frozen=True)
class CtOptions:
    """Options shared by both CT types; ``KIND`` is set by the registry entry."""

    KIND: ClassVar[Literal["ct002", "ct003"]] = "ct002"

    meter: str | None = field(default=None, metadata={
        "doc": "name of the meter to serve (default: the first meter)"})
    name: str | None = field(default=None, metadata={"doc": "device name (overview, metrics, MQTT)"})
    mac: str = field(default="auto", metadata={
        "doc": "this CT's MAC, 12 hex digits or 'auto' (generated once, kept in the store)"})
    ct_mac: str = field(default="echo", metadata={
        "doc": "'echo': answer whatever CT MAC a battery asks for; 'own': answer only this CT's MAC "
               "(or 000000000000)"})
    mode: Literal["control", "relay"] = field(default="control", metadata={
        "doc": "control: each battery its own value; relay: what a real CT sends (sums, counts, round robin)"})
    udp_port: int = field(default=DEFAULT_PORT, metadata={"doc": "UDP port batteries send to"})
    udp_bind: str | None = field(default=None, metadata={
        "doc": "address for UDP (default: server.host; 0.0.0.0 receives broadcasts)"})
    on_stale: Literal["error", "hold"] | FallbackPolicy = field(default="error", metadata={
        "doc": "stale meter: error (no answer), hold (zero adjustment), {fallback: W} (aim the batteries "
               "at this total output)"})
    slots: int = field(default=9, metadata={"doc": "batteries served at a time (a real CT has 9)"})
    eviction_floor: float = field(default=5.0, metadata={
        "doc": "s: a battery is forgotten after twice its poll interval, never sooner than this"})
    wifi_rssi: int = field(default=-50, metadata={"doc": "the RSSI reported to batteries"})
    bucket_count: int = field(default=2, metadata={
        "doc": "mode control: the *_chrg_nb announced, each value multiplied by it so the battery's int(g/nb) "
               "gives it back; above 1 the Venus firmware skips its one-shot spike filter (a second 3 s "
               "cycle on every step; the controller filters noise itself). 1: what a lone battery is told"})
    control: ControlOptions = field(default_factory=ControlOptions, metadata={
        "doc": "active control (mode: control); weights keyed by battery MAC"})

    @property
    def ct_type(self) -> str:
        return "HME-4" if self.KIND == "ct002" else "HME-3"

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.mac != "auto" and not re.fullmatch(r"[0-9A-Fa-f]{12}", self.mac.replace(":", "")):
            errors.append(("mac", f"expected 12 hex digits or 'auto'; got {self.mac!r}"))
        if self.ct_mac not in ("echo", "own"):
            errors.append(("ct_mac", f"expected echo or own; got {self.ct_mac!r}"))
        if not 0 <= self.udp_port <= 65535:
            errors.append(("udp_port", f"expected a port 0-65535; got {self.udp_port}"))
        if not 1 <= self.slots <= 64:
            errors.append(("slots", f"expected 1-64; got {self.slots}"))
        if not 0 < self.eviction_floor <= 3600:
            errors.append(("eviction_floor", f"expected seconds above 0; got {self.eviction_floor}"))
        if not 1 <= self.bucket_count <= 9:
            errors.append(("bucket_count", f"expected 1-9 (a CT has 9 slots); got {self.bucket_count}"))
        if not -127 <= self.wifi_rssi <= 0:
            errors.append(("wifi_rssi", f"expected -127..0; got {self.wifi_rssi}"))
        return errors


@dataclass(frozen=True)
class Ct002Options(CtOptions):
    KIND: ClassVar[Literal["ct002", "ct003"]] = "ct002"


@dataclass(frozen=True)
class Ct003Options(CtOptions):
    KIND: ClassVar[Literal["ct002", "ct003"]] = "ct003"
