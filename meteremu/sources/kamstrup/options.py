"""Options of the Kamstrup KMP source (``source: {type: kamstrup, …}``). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from meteremu.configtypes import Duration
from meteremu.sources.dsmr.options import endpoint_errors, split_host_port
from meteremu.sources.kamstrup.kmp import HEAT_METER
from meteremu.sources.kamstrup.parse import DEFAULT_REGISTERS, REGISTERS, Register, resolve_register


@dataclass(frozen=True)
class KamstrupOptions:
    serial: str | None = field(default=None, metadata={
        "doc": "serial device of the optical head, e.g. /dev/ttyUSB0"})
    tcp: str | None = field(default=None, metadata={
        "doc": "host:port of a ser2net bridge to the optical head (1200n82)"})
    interval: Duration = field(default=3600.0, metadata={
        "doc": "time between reads; each read costs meter battery (30 min or more on battery meters)"})
    registers: tuple[str, ...] = field(default=DEFAULT_REGISTERS, metadata={
        "doc": "register names (heat_energy, volume, flow, power, temp_inlet, temp_outlet, "
               "temp_diff, temp_t3, temp_t4, pressure_inlet, pressure_outlet, info, "
               "operating_hours, heat_energy_hires) or ids like 0x03EC"})
    baudrate: int = field(default=1200, metadata={"doc": "optical head speed (some models: 2400, 9600)"})
    stopbits: Literal[1, 2] = field(default=2, metadata={"doc": "stop bits (8N2 on MULTICAL heads)"})
    address: int = field(default=HEAT_METER, metadata={"doc": "KMP destination address (63 = heat meter)"})
    timeout: Duration = field(default=5.0, metadata={"doc": "wait for each answer"})
    retries: int = field(default=2, metadata={"doc": "extra attempts per request"})
    retry_min: Duration = field(default=30.0, metadata={
        "doc": "after a failed read, the next one comes this soon (doubling up to interval)"})
    connect_timeout: Duration = field(default=10.0, metadata={"doc": "TCP connect timeout"})

    def register_list(self) -> list[Register]:
        return [resolve_register(name) for name in self.registers]

    def host_port(self) -> tuple[str, int]:
        assert self.tcp is not None
        return split_host_port(self.tcp)

    def validate(self) -> list[tuple[str, str]]:
        errors = endpoint_errors(self.serial, self.tcp, "192.168.1.20:4001", check_serial=False)
        if not self.registers:
            errors.append(("registers", "at least one register"))
        for i, name in enumerate(self.registers):
            try:
                resolve_register(name)
            except ValueError:
                errors.append((f"registers[{i}]", "a register name (" + ", ".join(REGISTERS)
                               + f") or an id like 0x03EC; got {name!r}"))
        if not errors and len({r.id for r in self.register_list()}) != len(self.registers):
            errors.append(("registers", "each register once"))
        if self.baudrate not in (300, 600, 1200, 2400, 4800, 9600, 19200):
            errors.append(("baudrate", "a serial speed such as 1200, 2400 or 9600"))
        if not 0 <= self.address <= 255:
            errors.append(("address", "a KMP address 0-255 (63 = heat meter)"))
        if not 0 <= self.retries <= 10:
            errors.append(("retries", "0 to 10"))
        for name in ("interval", "timeout", "retry_min", "connect_timeout"):
            if not getattr(self, name) > 0:
                errors.append((name, "a duration greater than 0"))
        return errors
