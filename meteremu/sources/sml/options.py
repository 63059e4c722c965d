"""Options of the SML source (``source: {type: sml, …}``). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from meteremu.configtypes import Duration
from meteremu.sources.dsmr.options import endpoint_errors, split_host_port
from meteremu.sources.jsonfields import DEFAULT_MAX_POWER
from meteremu.sources.smlparse import smllib_problem

MIN_IDLE_TIMEOUT = 30.0


@dataclass(frozen=True)
class SmlOptions:
    serial: str | None = field(default=None, metadata={
        "doc": "serial device of the infrared head, e.g. /dev/ttyUSB0 (or a /dev/serial/by-id/ path)"})
    tcp: str | None = field(default=None, metadata={
        "doc": "host:port of a ser2net-style bridge that streams the head's raw bytes"})
    baudrate: int = field(default=9600, metadata={"doc": "serial: line speed (SML meters send 9600 8N1)"})
    interval: Duration = field(default=2.0, metadata={
        "doc": "how often the meter sends a frame (1-4 s); stale_after defaults to 3x this"})
    idle_timeout: Duration | None = field(default=None, metadata={
        "doc": "reconnect when no valid frame arrived for this long; default max(3 x interval, 30s)"})
    invert: bool = field(default=False, metadata={"doc": "multiply grid power by -1 (a meter that counts export positive)"})
    max_power: float = field(default=DEFAULT_MAX_POWER, metadata={"doc": "W: a power value beyond this is refused"})
    connect_timeout: Duration = field(default=10.0, metadata={"doc": "TCP connect timeout"})
    reconnect_min: Duration = field(default=1.0, metadata={"doc": "first reconnect delay"})
    reconnect_max: Duration = field(default=30.0, metadata={"doc": "longest reconnect delay"})

    def idle(self) -> float:
        return self.idle_timeout if self.idle_timeout is not None else max(3 * self.interval, MIN_IDLE_TIMEOUT)

    def host_port(self) -> tuple[str, int]:
        assert self.tcp is not None
        return split_host_port(self.tcp)

    def validate(self) -> list[tuple[str, str]]:
        errors = endpoint_errors(self.serial, self.tcp, "192.168.1.20:2001")
        problem = smllib_problem()
        if problem:
            errors.append(("serial" if self.serial is not None else "tcp", problem))
        if self.baudrate not in (300, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
            errors.append(("baudrate", "a standard speed such as 9600"))
        if self.tcp is not None and self.baudrate != 9600:
            errors.append(("baudrate", "serial: only (set the speed on the bridge)"))
        for name in ("interval", "connect_timeout", "reconnect_min", "reconnect_max"):
            if not getattr(self, name) > 0:
                errors.append((name, "a duration greater than 0"))
        if self.reconnect_max < self.reconnect_min:
            errors.append(("reconnect_max", "a duration at least reconnect_min"))
        if self.idle_timeout is not None and not self.idle_timeout > self.interval:
            errors.append(("idle_timeout", "a duration longer than interval"))
        if not self.max_power > 0 or self.max_power == float("inf"):
            errors.append(("max_power", "a finite power in W greater than 0"))
        return errors
