"""Configuration of one emulated SMA Energy Meter (``devices: - type: sma_energy_meter``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from meteremu.configtypes import Duration
from meteremu.devices.shelly.options import FallbackPolicy
from meteremu.devices.sma.speedwire import DEFAULT_SUSY_ID, MULTICAST_GROUP, PORT


@dataclass(frozen=True)
class Options:
    meter: str | None = field(default=None, metadata={
        "doc": "name of the meter to serve (default: the first meter)"})
    serial: int | None = field(default=None, metadata={
        "doc": "serial number (default: generated once, kept in the store)"})
    susy_id: int = field(default=DEFAULT_SUSY_ID, metadata={
        "doc": "SUSy id: 270 Energy Meter 1.0, 349 Energy Meter 2.0, 372 Home Manager 2.0"})
    destinations: tuple[str, ...] = field(default=(MULTICAST_GROUP,), metadata={
        "doc": "IPv4 addresses to send to: the multicast group and/or unicast receivers"})
    port: int = field(default=PORT, metadata={"doc": "UDP port of the receivers"})
    interface: str | None = field(default=None, metadata={
        "doc": "interface name or IPv4 address multicast leaves from (default: the routing table's choice)"})
    ttl: int = field(default=1, metadata={
        "doc": "multicast TTL (1: this LAN only; uni-meter uses 32)"})
    loopback: bool = field(default=True, metadata={
        "doc": "also deliver multicast to receivers on this host"})
    interval: Duration = field(default=1.0, metadata={"doc": "one datagram this often (the meter's 1 s)"})
    on_stale: Literal["error", "hold"] | FallbackPolicy = field(default="error", metadata={
        "doc": "while the meter is stale or down: error (send nothing), hold, or {fallback: W}"})

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.serial is not None and not 1 <= self.serial <= 0xFFFFFFFF:
            errors.append(("serial", f"expected 1-4294967295; got {self.serial}"))
        if not 0 <= self.susy_id <= 0xFFFF:
            errors.append(("susy_id", f"expected 0-65535; got {self.susy_id}"))
        if not self.destinations:
            errors.append(("destinations", "expected at least one address"))
        for address in self.destinations:
            try:
                ip = ipaddress.IPv4Address(address)
            except ValueError:
                errors.append(("destinations", f"expected IPv4 addresses; got {address!r}"))
                continue
            if ip.is_unspecified or ip == ipaddress.IPv4Address("255.255.255.255"):
                errors.append(("destinations", f"expected a unicast or multicast address; got {address}"))
        if not 1 <= self.port <= 65535:
            errors.append(("port", f"expected a port 1-65535; got {self.port}"))
        if not 1 <= self.ttl <= 255:
            errors.append(("ttl", f"expected 1-255; got {self.ttl}"))
        if not 0.1 <= self.interval <= 3600:
            errors.append(("interval", "expected a duration from 100ms to 1h"))
        return errors
