"""Options of the DSMR / P1 source (``source: {type: dsmr, …}``). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from meteremu.configtypes import Duration

VERSION_NAMES = ("auto", "2.2", "3", "4", "4+", "5", "5B", "5L", "5S", "Q3D", "ISKRA_IE", "5EONHU",
                 "SAGEMCOM_T210_D_R", "MSn")
MIN_IDLE_TIMEOUT = 30.0


def endpoint_errors(serial: str | None, tcp: str | None, tcp_example: str,
                    check_serial: bool = True) -> list[tuple[str, str]]:
    """Errors of a ``serial:`` / ``tcp:`` pair: exactly one set, ``tcp`` a host:port, and
    (with ``check_serial``) ``serial`` not blank."""
    errors: list[tuple[str, str]] = []
    if (serial is None) == (tcp is None):
        errors.append(("serial", "either serial: /dev/ttyUSB0 or tcp: host:port, not both"))
    if check_serial and serial is not None and not serial.strip():
        errors.append(("serial", "a serial device path like /dev/ttyUSB0"))
    if tcp is not None:
        try:
            split_host_port(tcp)
        except ValueError:
            errors.append(("tcp", f"host:port like {tcp_example}; got {tcp!r}"))
    return errors


def split_host_port(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` → ``(host, port)``; ValueError if not."""
    value = text.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(text)
        port_text = rest[1:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(text)
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(text)
    return host, int(port_text)


def _is_key(value: str) -> bool:
    text = value.strip()
    return len(text) == 32 and all(ch in "0123456789abcdefABCDEF" for ch in text)


def normalise_version(value: str) -> str | None:
    """The canonical spelling of a ``version`` value (case-insensitive), or None."""
    for name in VERSION_NAMES:
        if str(value).strip().lower() == name.lower():
            return name
    return None


@dataclass(frozen=True)
class DsmrOptions:
    serial: str | None = field(default=None, metadata={
        "doc": "serial device of the P1 cable, e.g. /dev/ttyUSB0 (or a /dev/serial/by-id/ path)"})
    tcp: str | None = field(default=None, metadata={
        "doc": "host:port of a ser2net-style bridge or P1 dongle that streams the raw telegrams"})
    version: str = field(default="auto", metadata={
        "doc": "auto, or a dsmr_parser version: 2.2, 3, 4, 4+, 5, 5B (BE), 5L (LU), 5S (SE), Q3D, "
               "ISKRA_IE, 5EONHU (HU), SAGEMCOM_T210_D_R (AT), MSn (LU, encrypted)"})
    encryption_key: str | None = field(default=None, repr=False, metadata={
        "doc": "32 hex digits: the telegrams are DLMS-encrypted (Austria, Luxembourg); a secret"})
    authentication_key: str | None = field(default=None, repr=False, metadata={
        "doc": "32 hex digits to verify encrypted telegrams (MSn: the public Smarty key by default); "
               "without it the CRC alone guards them"})
    line: str | None = field(default=None, metadata={
        "doc": 'serial line settings instead of the version\'s, e.g. "115200 8N1" or "9600 7E1"'})
    interval: Duration = field(default=10.0, metadata={
        "doc": "how often the meter sends a telegram (1s for DSMR 5, 10s for older); stale_after "
               "defaults to 3x this"})
    idle_timeout: Duration | None = field(default=None, metadata={
        "doc": "reconnect when no valid telegram arrived for this long; default max(3 x interval, 30s)"})
    timestamps: Literal["meter", "arrival"] = field(default="meter", metadata={
        "doc": "measured_at from the telegram's own clock (0-0:1.0.0), or the arrival time (replays)"})
    check_crc: bool = field(default=True, metadata={
        "doc": "drop telegrams whose CRC does not match (false only for meters with a broken CRC)"})
    connect_timeout: Duration = field(default=10.0, metadata={"doc": "TCP connect timeout"})
    reconnect_min: Duration = field(default=1.0, metadata={"doc": "first reconnect delay"})
    reconnect_max: Duration = field(default=30.0, metadata={"doc": "longest reconnect delay"})

    def spec_name(self) -> str:
        return normalise_version(self.version) or self.version

    def idle(self) -> float:
        """The idle watchdog: longer than the meter's interval, at least 30 s by default."""
        if self.idle_timeout is not None:
            return self.idle_timeout
        return max(3 * self.interval, MIN_IDLE_TIMEOUT)

    def keys(self) -> tuple[bytes | None, bytes | None]:
        """``(encryption key, authentication key)`` as bytes (None when not set)."""
        def raw(value: str | None) -> bytes | None:
            return bytes.fromhex(value.strip()) if value else None

        return raw(self.encryption_key), raw(self.authentication_key)

    def host_port(self) -> tuple[str, int]:
        assert self.tcp is not None
        return split_host_port(self.tcp)

    def validate(self) -> list[tuple[str, str]]:
        from meteremu.sources.dsmr.parse import parse_line

        errors = endpoint_errors(self.serial, self.tcp, "192.168.1.20:2000")
        if normalise_version(self.version) is None:
            errors.append(("version", "one of " + ", ".join(VERSION_NAMES) + f"; got {self.version!r}"))
        if self.line is not None:
            if self.tcp is not None:
                errors.append(("line", "line settings only apply to serial: (set them on the bridge)"))
            try:
                parse_line(self.line)
            except ValueError:
                errors.append(("line", f'line settings like "115200 8N1" or "9600 7E1"; got {self.line!r}'))
        for name in ("encryption_key", "authentication_key"):
            value = getattr(self, name)
            if value is not None and not _is_key(value):
                errors.append((name, "a key of 32 hex digits (16 bytes)"))
        if self.authentication_key and not self.encryption_key:
            errors.append(("authentication_key", "encryption_key as well"))
        if self.spec_name() == "MSn" and not self.encryption_key:
            errors.append(("encryption_key", "the meter's key: MSn telegrams are encrypted"))
        for name in ("interval", "connect_timeout", "reconnect_min", "reconnect_max"):
            if not getattr(self, name) > 0:
                errors.append((name, "a duration greater than 0"))
        if self.reconnect_max < self.reconnect_min:
            errors.append(("reconnect_max", "a duration at least reconnect_min"))
        if self.idle_timeout is not None and not self.idle_timeout > self.interval:
            errors.append(("idle_timeout", "a duration longer than interval (the meter's send "
                                           "interval), or it reconnects between two telegrams"))
        return errors
