"""Options of the Modbus source (``source: {type: modbus, …}``). Pure: no client is loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from meteremu.configtypes import Duration
from meteremu.sources.addresses import host_errors, port_errors
from meteremu.sources.homewizard.options import host_port
from meteremu.sources.jsonfields import DEFAULT_MAX_POWER
from meteremu.sources.modbus.registers import DataType, Order, Table
from meteremu.sources.values import (
    COUNTER_KEYS,
    layout_errors,
    quantity_fields,
    scale_errors,
    unit_errors,
    value_items,
    value_where,
)

PRESET_NAMES = ("sdm630", "sdm120", "dtsu666", "sunspec")


@dataclass(frozen=True)
class ModbusRegister:
    """One value: where it is and how to read it."""

    address: int = field(metadata={"doc": "register address (0-based, as on the wire: 30001/40001 is 0)"})
    table: Table = field(default="holding", metadata={"doc": "input (function 04) or holding (function 03)"})
    type: DataType = field(default="int16", metadata={"doc": "int16, uint16, int32, uint32 or float32"})
    word_order: Order = field(default="big", metadata={"doc": "32-bit values: big (high word first) or little"})
    byte_order: Order = field(default="big", metadata={"doc": "bytes within each register: big (Modbus') or little"})
    scale: float = field(default=1.0, metadata={"doc": "multiply by this (0.1 for a value in tenths)"})
    unit: str | None = field(default=None, metadata={"doc": "unit after scaling (W, kW, Wh, kWh, V, A, Hz…)"})
    invert: bool = field(default=False, metadata={"doc": "multiply by -1"})
    scale_register: int | None = field(default=None, metadata={
        "doc": "address (same table) of an int16 power-of-ten scale factor read with the value (SunSpec's *_SF)"})

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        if not 0 <= self.address <= 0xFFFF:
            errors.append(("address", f"0 to 65535; got {self.address}"))
        if self.scale_register is not None and not 0 <= self.scale_register <= 0xFFFF:
            errors.append(("scale_register", f"0 to 65535; got {self.scale_register}"))
        return errors + scale_errors(self.scale)


@dataclass(frozen=True)
@quantity_fields(ModbusRegister)
class ModbusValues:
    """Which register feeds which quantity (the keys of the MQTT source's ``values``)."""

    def items(self) -> list[tuple[str, int, ModbusRegister]]:
        return value_items(self)

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        for key, index, item in self.items():
            where = value_where(self, key, index)
            if key in COUNTER_KEYS and item.unit is None:
                errors.append((where, "the counter's unit: {address: …, unit: kWh} (or Wh)"))
            else:
                errors += unit_errors(key, item.unit, where)
        return errors + layout_errors(self, "register")


@dataclass(frozen=True)
class ModbusOptions:
    host: str = field(metadata={"doc": "the meter's Modbus TCP gateway, e.g. 192.168.1.40 (optionally :port)"})
    port: int = field(default=502, metadata={"doc": "TCP port (if host has none)"})
    framer: Literal["tcp", "rtu"] = field(default="tcp", metadata={
        "doc": "tcp: Modbus TCP; rtu: RTU frames over TCP (a transparent serial gateway)"})
    unit: int = field(default=1, metadata={"doc": "unit (slave / device) id"})
    preset: Literal["sdm630", "sdm120", "dtsu666", "sunspec"] | None = field(default=None, metadata={
        "doc": "a known meter's register map (sdm630, sdm120, dtsu666, or sunspec: models 201-204 discovered)"})
    values: ModbusValues | None = field(default=None, metadata={"doc": "the register map (without a preset)"})
    sunspec_base: int = field(default=40000, metadata={"doc": "sunspec: where the SunS marker is (40000, 0 or 50000)"})
    max_gap: int = field(default=16, metadata={"doc": "read through at most this many unused registers per request"})
    interval: Duration = field(default=1.0, metadata={"doc": "poll period"})
    timeout: Duration = field(default=2.0, metadata={"doc": "one request's answer must come within this"})
    invert: bool = field(default=False, metadata={"doc": "multiply power by -1 (a meter measuring the other way)"})
    max_power: float = field(default=DEFAULT_MAX_POWER, metadata={"doc": "W: a power value beyond this is refused"})
    reconnect_min: Duration = field(default=1.0, metadata={"doc": "first retry delay after a failure"})
    reconnect_max: Duration = field(default=60.0, metadata={"doc": "longest retry delay"})

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        errors += host_errors(self.host, "the gateway's address, e.g. 192.168.1.40")
        errors += port_errors(self.port)
        if not 0 <= self.unit <= 255:
            errors.append(("unit", f"a unit id 0 to 255; got {self.unit}"))
        if (self.preset is None) == (self.values is None):
            errors.append(("preset", "either a preset or values (a register map), not both"))
        if not 0 <= self.sunspec_base <= 0xFFFF:
            errors.append(("sunspec_base", f"a register address; got {self.sunspec_base}"))
        if not 0 <= self.max_gap <= 100:
            errors.append(("max_gap", "0 to 100 registers"))
        for name in ("interval", "timeout", "reconnect_min", "reconnect_max"):
            if not 0 < getattr(self, name) < math.inf:
                errors.append((name, "a duration greater than 0"))
        if self.reconnect_max < self.reconnect_min:
            errors.append(("reconnect_max", "at least reconnect_min"))
        if not self.max_power > 0 or self.max_power == math.inf:
            errors.append(("max_power", "a finite power in W greater than 0"))
        return errors

    def address(self) -> tuple[str, int]:
        return host_port(self.host, self.port)
