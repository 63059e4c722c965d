"""Configuration of one emulated Shelly Pro 3EM (``devices: - type: shelly_pro_3em``)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from meteremu.configtypes import Duration
from meteremu.control.options import ControlOptions
from meteremu.devices.shelly.faces import EM_GEN3, PRO_3EM, PRO_EM50, Face

DEFAULT_MODEL = "SPEM-003CEBEU"
DEFAULT_FW_ID = "20250508-110717/1.6.1-g8dbd358"
DEFAULT_APP = "Pro3EM"
FW_ID_RE = re.compile(r"^(\d{8})-\d{6}/(\S+?)(?:-g[0-9a-f]+)?$")


@dataclass(frozen=True)
class FallbackPolicy:
    """``on_stale: {fallback: <watts>}``: serve this total (on phase A) while stale."""

    fallback: float


@dataclass(frozen=True)
class MdnsOptions:
    """``mdns: {…}``: where and as whom to announce (``mdns: true`` = defaults)."""

    enabled: bool = field(default=True, metadata={"doc": "announce over mDNS"})
    hostname: str | None = field(default=None, metadata={
        "doc": "host name to announce (default: the device id)"})
    addresses: tuple[str, ...] = field(default=(), metadata={
        "doc": "IP addresses to announce (default: the primary one)"})
    interfaces: tuple[str, ...] = field(default=(), metadata={
        "doc": "interface names or IPs to announce on (default: those of addresses)"})
    port: int | None = field(default=None, metadata={"doc": "port to announce (default: the HTTP port)"})


@dataclass(frozen=True)
class ScalingOptions:
    """Request-side scaling for several batteries on one meter.

    ``divide`` splits power and current by the number of active batteries (a
    battery counts itself); ``weights`` multiplies them by a factor per client
    IP. Voltage, pf and frequency are never scaled; non-battery clients (Home
    Assistant, browsers) always see the real values.
    """

    mode: Literal["none", "divide", "weights"] = field(default="none", metadata={
        "doc": "none, divide or weights"})
    ttl: Duration = field(default=30.0, metadata={
        "doc": "a battery counts as active this long after its last poll"})
    weights: dict[str, float] = field(default_factory=dict, metadata={
        "doc": "factor per client IP (mode: weights)"})
    default_weight: float = field(default=1.0, metadata={"doc": "factor for battery IPs not in weights"})
    max_batteries: int = field(default=8, metadata={
        "doc": "at most this many client IPs count as batteries at a time (spoofed pollers cannot dilute more)"})
    min_interval: Duration = field(default=0.0, metadata={
        "doc": "per client: drop (never queue) polls closer than this; 0 = off"})

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.ttl <= 0:
            errors.append(("ttl", "expected a duration above 0"))
        for ip, factor in self.weights.items():
            if factor < 0:
                errors.append((f"weights.{ip}", f"expected a factor >= 0; got {factor}"))
        if not 1 <= self.max_batteries <= 1024:
            errors.append(("max_batteries", f"expected 1-1024; got {self.max_batteries}"))
        if self.mode == "weights" and not self.weights:
            errors.append(("weights", "mode 'weights' needs at least one 'ip: factor' entry"))
        return errors


@dataclass(frozen=True)
class ClientIdentityOptions:
    """``clients: {<ip>: {mac: …}}``: what one client sees the device as.

    Indevolt pairs one meter per system: two systems on one emulated device
    need two device ids, so each listed client IP sees its own MAC and the
    id derived from it on every transport.
    """

    mac: str = field(default="auto", metadata={
        "doc": "12 hex digits, or 'auto' (generated once, kept in the store)"})


MAC_RE = re.compile(r"[0-9A-Fa-f]{12}")


def valid_mac(mac: str) -> bool:
    """12 hex digits, with or without ':' or '-' separators."""
    return MAC_RE.fullmatch(mac.replace(":", "").replace("-", "")) is not None


@dataclass(frozen=True)
class Options:
    FACE: ClassVar[Face] = PRO_3EM

    meter: str | None = field(default=None, metadata={
        "doc": "name of the meter to serve (default: the first meter)"})
    name: str | None = field(default=None, metadata={
        "doc": "device name shown in GetDeviceInfo/sys.device.name"})
    mac: str = field(default="auto", metadata={
        "doc": "12 hex digits, or 'auto' (generated once, kept in the store)"})
    device_id: str | None = field(default=None, metadata={
        "doc": "override the id (default <prefix>-<mac lowercase>, e.g. shellypro3em-…)"})
    model: str = field(default=DEFAULT_MODEL, metadata={"doc": "model string"})
    fw_id: str = field(default=DEFAULT_FW_ID, metadata={
        "doc": "firmware id, YYYYMMDD-HHMMSS/<ver>-g<hash>"})
    ver: str | None = field(default=None, metadata={
        "doc": "firmware version (default: taken from fw_id)"})
    app: str = field(default=DEFAULT_APP, metadata={"doc": "application name"})
    gen: int = field(default=2, metadata={"doc": "device generation"})
    serial: str | None = field(default=None, metadata={
        "doc": "serial number (shown in /admin and metrics)"})
    manufacturer: str = field(default="Allterco Robotics", metadata={
        "doc": "manufacturer (shown in /admin and metrics)"})
    profile: Literal["triphase", "monophase"] = field(default="triphase", metadata={
        "doc": "triphase (em:0) or monophase (em1:0..2)"})
    on_stale: Literal["error", "hold"] | FallbackPolicy = field(default="error", metadata={
        "doc": "what to serve while the meter is stale or down"})
    http_port: int | None = field(default=None, metadata={
        "doc": "HTTP port of this device (default: server.http_port)"})
    modbus_port: int | None = field(default=None, metadata={
        "doc": "Modbus TCP port (502 on a Pi); off when unset"})
    modbus_bind: str | None = field(default=None, metadata={
        "doc": "address for Modbus TCP (default: server.host)"})
    modbus_unit_id: int = field(default=1, metadata={"doc": "Modbus unit id"})
    mdns: bool | MdnsOptions = field(default=False, metadata={
        "doc": "announce _http._tcp and _shelly._tcp over mDNS"})
    websocket: bool = field(default=True, metadata={
        "doc": "answer WebSocket RPC on /rpc (Home Assistant, aioshelly)"})
    websocket_ports: tuple[int, ...] = field(default=(), metadata={
        "doc": "extra ports serving the same endpoints"})
    notify_interval: Duration = field(default=1.0, metadata={
        "doc": "at most one NotifyStatus per client this often"})
    notify_epsilon: float = field(default=0.0, metadata={
        "doc": "deadband in W for notified power (and the matching current); 0 = every visible change"})
    udp_ports: tuple[int, ...] = field(default=(), metadata={
        "doc": "UDP JSON-RPC ports (Marstek: 1010, 2220; 2222, 2223)"})
    udp_bind: str | None = field(default=None, metadata={
        "doc": "address for UDP (default: server.host; 0.0.0.0 receives broadcasts)"})
    udp_max_bytes: int = field(default=2048, metadata={"doc": "datagrams larger than this are dropped"})
    payload: Literal["full", "minimal"] = field(default="full", metadata={
        "doc": "EM.GetStatus answer: full, or minimal (act_power fields only, for picky batteries)"})
    scaling: ScalingOptions = field(default_factory=ScalingOptions, metadata={
        "doc": "several batteries on one meter"})
    gen1_endpoints: bool = field(default=True, metadata={
        "doc": "also serve the gen1 /status, /emeter/<n> and /settings (Hoymiles, Anker)"})
    clients: dict[str, ClientIdentityOptions] = field(default_factory=dict, metadata={
        "doc": "per client IP its own identity ({mac: …}): one meter per Indevolt system"})
    control: ControlOptions | None = field(default=None, metadata={
        "doc": "active control: each battery its own value (weights by IP); replaces scaling for batteries"})

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.mac != "auto" and not valid_mac(self.mac):
            errors.append(("mac", f"expected 12 hex digits or 'auto'; got {self.mac!r}"))
        errors.extend(self._validate_clients())
        if not FW_ID_RE.match(self.fw_id):
            errors.append(("fw_id", f"expected YYYYMMDD-HHMMSS/<version>-g<hash>; got {self.fw_id!r}"))
        for name in ("http_port", "modbus_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                errors.append((name, f"expected a port 0-65535; got {port}"))
        if isinstance(self.mdns, MdnsOptions) and self.mdns.port is not None and not 0 < self.mdns.port <= 65535:
            errors.append(("mdns.port", f"expected a port 1-65535; got {self.mdns.port}"))
        if not 0 <= self.modbus_unit_id <= 255:
            errors.append(("modbus_unit_id", f"expected 0-255; got {self.modbus_unit_id}"))
        for name in ("websocket_ports", "udp_ports"):
            for port in getattr(self, name):
                if not 0 <= port <= 65535:
                    errors.append((name, f"expected ports 0-65535; got {port}"))
        if 0 in self.websocket_ports:
            # An extra listener on a random port could never be found by a client.
            errors.append(("websocket_ports", "expected fixed ports 1-65535; got 0"))
        if not 0 <= self.notify_epsilon < float("inf"):
            errors.append(("notify_epsilon", f"expected watts, 0 or more; got {self.notify_epsilon}"))
        if self.notify_interval <= 0:
            errors.append(("notify_interval", "expected a duration above 0"))
        if not 64 <= self.udp_max_bytes <= 65507:
            errors.append(("udp_max_bytes", f"expected 64-65507; got {self.udp_max_bytes}"))
        if self.control is not None and self.control.enabled and self.scaling.mode != "none":
            errors.append(("control", "use either control or scaling (mode: none), not both"))
        errors.extend(self._validate_face())
        if self.device_id is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.device_id):
            errors.append(("device_id", "expected letters, digits, '-', '_' or '.'"))
        return errors


    def _validate_face(self) -> list[tuple[str, str]]:
        """Options that only the Pro 3EM has (its Modbus map, profiles, gen1 shapes)."""
        if self.FACE is PRO_3EM:
            return []
        errors = []
        if self.modbus_port is not None:
            errors.append(("modbus_port", f"{self.FACE.type} has no emulated Modbus map; remove modbus_port"))
        if self.profile != "triphase":
            errors.append(("profile", f"{self.FACE.type} has no profiles; remove profile"))
        if self.gen1_endpoints:
            errors.append(("gen1_endpoints", f"the gen1 endpoints are the Pro 3EM's; set false on {self.FACE.type}"))
        return errors

    def _validate_clients(self) -> list[tuple[str, str]]:
        errors = []
        seen: dict[str, str] = {}
        own = None if self.mac == "auto" else self.mac.replace(":", "").replace("-", "").upper()
        for ip, client in self.clients.items():
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                errors.append((f"clients.{ip}", f"expected a client IP address; got {ip!r}"))
            if client.mac == "auto":
                continue
            if not valid_mac(client.mac):
                errors.append((f"clients.{ip}.mac", f"expected 12 hex digits or 'auto'; got {client.mac!r}"))
                continue
            mac = client.mac.replace(":", "").replace("-", "").upper()
            if mac == own:
                errors.append((f"clients.{ip}.mac", "is the device's own MAC; a client needs its own"))
            elif mac in seen:
                errors.append((f"clients.{ip}.mac", f"is also the MAC of client {seen[mac]}"))
            seen[mac] = ip
        return errors


@dataclass(frozen=True)
class EmGen3Options(Options):
    """``type: shelly_em_gen3``: a Shelly EM Gen3 (Marstek polls it on UDP 2222)."""

    FACE: ClassVar[Face] = EM_GEN3

    model: str = field(default="S3EM-002CXCEU", metadata={"doc": "model string"})
    fw_id: str = field(default="20260311-095848/1.7.5-g9979d16", metadata={
        "doc": "firmware id, YYYYMMDD-HHMMSS/<ver>-g<hash>"})
    app: str = field(default="EMG3", metadata={"doc": "application name"})
    gen: int = field(default=3, metadata={"doc": "device generation"})
    udp_ports: tuple[int, ...] = field(default=(2222,), metadata={
        "doc": "UDP JSON-RPC ports (Marstek: 1010, 2220; 2222, 2223)"})
    gen1_endpoints: bool = field(default=False, metadata={
        "doc": "also serve the gen1 /status, /emeter/<n> and /settings (Hoymiles, Anker)"})


@dataclass(frozen=True)
class ProEm50Options(Options):
    """``type: shelly_pro_em50``: a Shelly Pro EM-50 (Marstek polls it on UDP 2223)."""

    FACE: ClassVar[Face] = PRO_EM50

    model: str = field(default="SPEM-002CEBEU50", metadata={"doc": "model string"})
    fw_id: str = field(default="20260311-095857/1.7.5-g9979d16", metadata={
        "doc": "firmware id, YYYYMMDD-HHMMSS/<ver>-g<hash>"})
    app: str = field(default="ProEM", metadata={"doc": "application name"})
    udp_ports: tuple[int, ...] = field(default=(2223,), metadata={
        "doc": "UDP JSON-RPC ports (Marstek: 1010, 2220; 2222, 2223)"})
    gen1_endpoints: bool = field(default=False, metadata={
        "doc": "also serve the gen1 /status, /emeter/<n> and /settings (Hoymiles, Anker)"})


def mdns_options(value: bool | MdnsOptions) -> MdnsOptions | None:
    """Normalise the device's ``mdns:`` option; ``None`` means "do not announce".

    ``mdns: true`` means all defaults; ``mdns: {enabled: false, …}`` keeps the
    settings in the file but turns announcing off.
    """
    if isinstance(value, MdnsOptions):
        return value if value.enabled else None
    return MdnsOptions() if value else None
