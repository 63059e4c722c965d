"""Configuration of one emulated Shelly Pro 3EM (``devices: - type: shelly_pro_3em``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from meteremu.configtypes import Duration

DEFAULT_MODEL = "SPEM-003CEBEU"
DEFAULT_FW_ID = "20250508-110717/1.6.1-g8dbd358"
DEFAULT_APP = "Pro3EM"
FW_ID_RE = re.compile(r"^(\d{8})-\d{6}/(\S+?)(?:-g[0-9a-f]+)?$")


def _doc(text: str, default: object = None, factory: object = None) -> object:
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class FallbackPolicy:
    """``on_stale: {fallback: <watts>}``: serve this total (on phase A) while stale."""

    fallback: float


@dataclass(frozen=True)
class MdnsOptions:
    """``mdns: {…}``: where and as whom to announce (``mdns: true`` = defaults)."""

    enabled: bool = _doc("announce over mDNS", True)
    hostname: str | None = _doc("host name to announce (default: the device id)")
    addresses: tuple[str, ...] = _doc("IP addresses to announce (default: the primary one)", ())
    interfaces: tuple[str, ...] = _doc("interface names or IPs to announce on (default: those of addresses)", ())
    port: int | None = _doc("port to announce (default: the HTTP port)")


@dataclass(frozen=True)
class ScalingOptions:
    """Request-side scaling for several batteries on one meter.

    ``divide`` splits power and current by the number of active batteries (a
    battery counts itself); ``weights`` multiplies them by a factor per client
    IP. Voltage, pf and frequency are never scaled; non-battery clients (Home
    Assistant, browsers) always see the real values.
    """

    mode: Literal["none", "divide", "weights"] = _doc("none, divide or weights", "none")
    ttl: Duration = _doc("a battery counts as active this long after its last poll", 30.0)
    weights: dict[str, float] = _doc("factor per client IP (mode: weights)", factory=dict)
    default_weight: float = _doc("factor for battery IPs not in weights", 1.0)
    min_interval: Duration = _doc("per client: drop (never queue) polls closer than this; 0 = off", 0.0)

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.ttl <= 0:
            errors.append(("ttl", "expected a duration above 0"))
        for ip, factor in self.weights.items():
            if factor < 0:
                errors.append((f"weights.{ip}", f"expected a factor >= 0; got {factor}"))
        if self.mode == "weights" and not self.weights:
            errors.append(("weights", "mode 'weights' needs at least one 'ip: factor' entry"))
        return errors


@dataclass(frozen=True)
class Options:
    meter: str | None = _doc("name of the meter to serve (default: the first meter)")
    name: str | None = _doc("device name shown in GetDeviceInfo/sys.device.name")
    mac: str = _doc("12 hex digits, or 'auto' (generated once, kept in the store)", "auto")
    device_id: str | None = _doc("override the id (default shellypro3em-<mac lowercase>)")
    model: str = _doc("model string", DEFAULT_MODEL)
    fw_id: str = _doc("firmware id, YYYYMMDD-HHMMSS/<ver>-g<hash>", DEFAULT_FW_ID)
    ver: str | None = _doc("firmware version (default: taken from fw_id)")
    app: str = _doc("application name", DEFAULT_APP)
    gen: int = _doc("device generation", 2)
    serial: str | None = _doc("serial number (shown in /admin and metrics)")
    manufacturer: str = _doc("manufacturer (shown in /admin and metrics)", "Allterco Robotics")
    profile: Literal["triphase", "monophase"] = _doc("triphase (em:0) or monophase (em1:0..2)", "triphase")
    on_stale: Literal["error", "hold"] | FallbackPolicy = _doc(
        "what to serve while the meter is stale or down", "error")
    http_port: int | None = _doc("HTTP port of this device (default: server.http_port)")
    modbus_port: int | None = _doc("Modbus TCP port (502 on a Pi); off when unset")
    modbus_bind: str | None = _doc("address for Modbus TCP (default: server.host)")
    modbus_unit_id: int = _doc("Modbus unit id", 1)
    mdns: bool | MdnsOptions = _doc("announce _http._tcp and _shelly._tcp over mDNS", False)
    websocket: bool = _doc("answer WebSocket RPC on /rpc (Home Assistant, aioshelly)", True)
    websocket_ports: tuple[int, ...] = _doc("extra ports serving the same endpoints", ())
    notify_interval: Duration = _doc("at most one NotifyStatus per client this often", 1.0)
    notify_epsilon: float = _doc(
        "deadband in W for notified power (and the matching current); 0 = every visible change", 0.0)
    udp_ports: tuple[int, ...] = _doc("UDP JSON-RPC ports (Marstek: 1010, 2220; 2222, 2223)", ())
    udp_bind: str | None = _doc("address for UDP (default: server.host; 0.0.0.0 receives broadcasts)")
    udp_max_bytes: int = _doc("datagrams larger than this are dropped", 2048)
    payload: Literal["full", "minimal"] = _doc(
        "EM.GetStatus answer: full, or minimal (act_power fields only, for picky batteries)", "full")
    scaling: ScalingOptions = _doc("several batteries on one meter", factory=ScalingOptions)

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.mac != "auto" and not re.fullmatch(r"[0-9A-Fa-f]{12}", self.mac.replace(":", "")):
            errors.append(("mac", f"expected 12 hex digits or 'auto'; got {self.mac!r}"))
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
        if self.device_id is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.device_id):
            errors.append(("device_id", "expected letters, digits, '-', '_' or '.'"))
        return errors


def mdns_options(value: bool | MdnsOptions) -> MdnsOptions | None:
    """Normalise the device's ``mdns:`` option; ``None`` means "do not announce".

    ``mdns: true`` means all defaults; ``mdns: {enabled: false, …}`` keeps the
    settings in the file but turns announcing off.
    """
    if isinstance(value, MdnsOptions):
        return value if value.enabled else None
    return MdnsOptions() if value else None
