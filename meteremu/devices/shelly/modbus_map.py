"""The Pro 3EM's Modbus register map (specs/shelly.md §4), pure.

No pymodbus, no reactor, no sockets: :class:`RegisterMap` turns the device's
state into 16-bit register values at request time, and the transport
(``modbus.py``) only moves them. Every block is built from the same
``status.py`` functions as ``EM.GetStatus``/``EMData.GetStatus``, so Modbus and
RPC agree at the same moment (up to float32 precision).

Addresses are wire addresses (input register ``31000`` is ``1000``). Encoding,
as the real device does it (§4):

* float32: IEEE-754, **low word first** (word order CDAB, bytes big-endian in
  each register); a null value (no neutral CT) reads as NaN;
* uint32 (timestamps): low word first as well;
* bool: one register, 0 or 1;
* strings: ASCII (UTF-8 for names), NUL-padded, the two bytes of each
  register swapped (first character in the low byte).

Reserved registers inside a block read 0. An address outside every block, or
a read that does not fit inside one block, is ``illegal data address`` (0x02):
Victron tells triphase from monophase by which of 31000 / 32000 fails.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.rpc import CallContext, RpcError
from meteremu.devices.shelly.status import (
    em1_status,
    em1data_status,
    em_status,
    emdata_status,
)
from meteremu.reading import PHASE_NAMES, Reading

ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03
DEVICE_FAILURE = 0x04
GATEWAY_NO_RESPONSE = 0x0B

MAX_READ_COUNT = 125  # registers per FC03/FC04 request (Modbus application protocol §6.3/6.4)

EM1_CHANNELS = 3  # em1:0..2 in the monophase profile

# Wire addresses and sizes of the blocks (§4.1–§4.4).
DEVICE_INFO_START, DEVICE_INFO_SIZE = 0, 48
EM_START, EM_SIZE = 1000, 80
EMDATA_START, EMDATA_SIZE = 1160, 70
EM1_START, EM1_STRIDE = 2000, 20
EM1DATA_START, EM1DATA_STRIDE = 2300, 20

MODBUS_CONTEXT = CallContext(transport="modbus")


# -- exceptions -------------------------------------------------------------


class ModbusError(Exception):
    """A request the device answers with a Modbus exception response."""

    code: int = DEVICE_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModbusIllegalAddress(ModbusError):
    """0x02: no such register (or the read leaves its block)."""

    code = ILLEGAL_ADDRESS


class ModbusIllegalValue(ModbusError):
    """0x03: a register count outside 1..125."""

    code = ILLEGAL_VALUE


class ModbusDeviceFailure(ModbusError):
    """0x04: no measurement to serve (the meter is stale or down under ``on_stale: error``)."""

    code = DEVICE_FAILURE


# -- encoding helpers ---------------------------------------------------------


def float32_cdab(value: float | None) -> list[int]:
    """One float as two registers, low word first; None (null) becomes NaN."""
    if value is None:
        value = math.nan
    try:
        raw = struct.pack(">f", value)
    except OverflowError:  # beyond float32 range: saturate as the float would
        raw = struct.pack(">f", math.copysign(math.inf, value))
    hi, lo = struct.unpack(">HH", raw)
    return [lo, hi]


def float32_from_cdab(registers: Sequence[int]) -> float:
    """Inverse of :func:`float32_cdab` (for tests and debugging)."""
    lo, hi = registers[0], registers[1]
    return float(struct.unpack(">f", struct.pack(">HH", hi, lo))[0])


def uint32_cdab(value: float) -> list[int]:
    """An unsigned 32-bit integer (unix time) as two registers, low word first.

    Fractions are dropped and the value is clamped to 0..2**32-1, so a
    simulated clock at 0 or a far-future source timestamp still encodes.
    """
    number = min(max(int(value), 0), 0xFFFFFFFF)
    return [number & 0xFFFF, number >> 16]


def uint32_from_cdab(registers: Sequence[int]) -> int:
    return registers[0] | registers[1] << 16


def _fit_utf8(text: str, limit: int) -> bytes:
    """UTF-8 bytes of ``text``, cut to ``limit`` without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def string_swapped(text: str | None, nregs: int) -> list[int]:
    """``text`` NUL-padded into ``nregs`` registers, first character in each low byte.

    A name read big-endian therefore looks scrambled (``Pro3EM-1`` reads
    ``rP3oME1-``), exactly as on the real device; clients such as Victron
    decode it little-endian. Too long a text is cut to fit.
    """
    data = _fit_utf8(text or "", 2 * nregs).ljust(2 * nregs, b"\0")
    return [data[i] | data[i + 1] << 8 for i in range(0, len(data), 2)]


def string_from_swapped(registers: Sequence[int]) -> str:
    """Inverse of :func:`string_swapped`, trailing NULs removed."""
    data = b"".join(bytes((r & 0xFF, r >> 8)) for r in registers)
    return data.rstrip(b"\0").decode("utf-8", errors="replace")


def _bool(value: Any) -> int:
    return 1 if value else 0


class _Registers:
    """A zero-filled block that fields are written into at their offsets."""

    def __init__(self, size: int) -> None:
        self.values = [0] * size

    def put(self, offset: int, words: Sequence[int]) -> None:
        self.values[offset:offset + len(words)] = words

    def flag(self, offset: int, value: Any) -> None:
        self.values[offset] = _bool(value)

    def f32(self, offset: int, value: float | None) -> None:
        self.put(offset, float32_cdab(value))

    def u32(self, offset: int, value: float) -> None:
        self.put(offset, uint32_cdab(value))


def _errors(status: dict[str, Any], key: str) -> list[str]:
    value = status.get(key)
    return list(value) if isinstance(value, list) else []


# -- the map ----------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A contiguous run of registers, built as a whole for every request."""

    name: str
    start: int
    size: int
    build: Callable[[CallContext], list[int]]

    @property
    def end(self) -> int:
        return self.start + self.size

    def __contains__(self, address: int) -> bool:
        return self.start <= address < self.end


class RegisterMap:
    """The input registers of one emulated Pro 3EM, computed per request.

    Triphase: device info, ``em:0`` (1000–1079) and ``emdata:0`` (1160–1229).
    Monophase: device info, ``em1:0..2`` (2000–2059) and ``em1data:0..2``
    (2300–2359). The live blocks (em / em1) follow the device's ``on_stale``
    policy through :meth:`ShellyDevice.serving_reading`: where RPC answers
    -114, Modbus answers 0x04; identity and energy counters always read.
    """

    def __init__(self, device: ShellyDevice) -> None:
        self.device = device
        info = Block("device_info", DEVICE_INFO_START, DEVICE_INFO_SIZE, self._device_info)
        if device.monophase:
            live = [
                Block("em1", EM1_START, EM1_STRIDE * EM1_CHANNELS, self._em1),
                Block("em1data", EM1DATA_START, EM1DATA_STRIDE * EM1_CHANNELS, self._em1data),
            ]
        else:
            live = [
                Block("em", EM_START, EM_SIZE, self._em),
                Block("emdata", EMDATA_START, EMDATA_SIZE, self._emdata),
            ]
        self.blocks: tuple[Block, ...] = (info, *live)

    def block_at(self, address: int, count: int = 1) -> Block:
        """The block holding all of ``address .. address+count-1``, or 0x02."""
        for block in self.blocks:
            if address in block:
                if address + count > block.end:
                    raise ModbusIllegalAddress(
                        f"registers {address}..{address + count - 1} leave block {block.name}")
                return block
        raise ModbusIllegalAddress(f"no register at address {address}")

    def read(self, address: int, count: int, ctx: CallContext = MODBUS_CONTEXT) -> list[int]:
        """``count`` registers from ``address``, computed now.

        ``ctx`` identifies the client, so request-side scaling
        (``device.scale_for``) applies to Modbus as to every other transport.
        Raises :class:`ModbusIllegalValue`, :class:`ModbusIllegalAddress` or
        :class:`ModbusDeviceFailure`.
        """
        if not 1 <= count <= MAX_READ_COUNT:
            raise ModbusIllegalValue(f"register count {count} not in 1..{MAX_READ_COUNT}")
        block = self.block_at(address, count)
        registers = block.build(ctx)
        offset = address - block.start
        return registers[offset:offset + count]

    # -- live state --------------------------------------------------------
    def _serving(self) -> Reading:
        try:
            return self.device.serving_reading()
        except RpcError as err:
            raise ModbusDeviceFailure(err.message) from None

    def _energy_timestamp(self) -> float:
        """When the counters last moved: the reading they were integrated up to."""
        latest = self.device.meter.latest
        return latest.measured_at if latest is not None else 0.0

    # -- blocks (each returns exactly ``size`` registers) ----------------------
    def _device_info(self, ctx: CallContext) -> list[int]:
        ident = self.device.identity_for(ctx.peer)
        return string_swapped(ident.mac, 6) + string_swapped(ident.model, 10) + string_swapped(ident.name, 32)

    def _em(self, ctx: CallContext) -> list[int]:
        reading = self._serving()
        status = em_status(reading, self.device.scale_for(ctx))
        errors = _errors(status, "errors")
        n_errors = _errors(status, "n_errors")
        regs = _Registers(EM_SIZE)
        regs.u32(0, reading.measured_at)
        for i, name in enumerate(PHASE_NAMES):
            regs.flag(2 + i, _errors(status, f"{name}_errors"))
        regs.flag(5, n_errors)
        regs.flag(6, "phase_sequence" in errors)
        regs.f32(7, status["n_current"])
        regs.flag(9, False)  # neutral current mismatch: no neutral CT is modelled
        regs.flag(10, "out_of_range:current" in n_errors)
        regs.f32(11, status["total_current"])
        regs.f32(13, status["total_act_power"])
        regs.f32(15, status["total_aprt_power"])
        for i, name in enumerate(PHASE_NAMES):
            base = 20 + 20 * i
            phase_errors = _errors(status, f"{name}_errors")
            regs.f32(base + 0, status[f"{name}_voltage"])
            regs.f32(base + 2, status[f"{name}_current"])
            regs.f32(base + 4, status[f"{name}_act_power"])
            regs.f32(base + 6, status[f"{name}_aprt_power"])
            regs.f32(base + 8, status[f"{name}_pf"])
            regs.flag(base + 10, {"out_of_range:active_power", "out_of_range:apparent_power"}
                      & set(phase_errors))
            regs.flag(base + 11, "out_of_range:voltage" in phase_errors)
            regs.flag(base + 12, "out_of_range:current" in phase_errors)
            regs.f32(base + 13, status[f"{name}_freq"])
        return regs.values

    def _emdata(self, ctx: CallContext) -> list[int]:
        """``emdata:0``: counters are never scaled and never depend on freshness.

        The emulator keeps only perpetual counters and models neither
        harmonics nor reactive energy, so the resettable and "fundamental"
        registers repeat the perpetual counters and reactive energy reads 0.0
        (as a phase the meter does not have reads 0.0, design.md §4).
        """
        status = emdata_status(self.device.meter.energy)
        regs = _Registers(EMDATA_SIZE)
        regs.u32(0, self._energy_timestamp())
        regs.f32(2, status["total_act"])
        regs.f32(4, status["total_act_ret"])
        for i, name in enumerate(PHASE_NAMES):
            base = 10 + 20 * i
            act = status[f"{name}_total_act_energy"]
            ret = status[f"{name}_total_act_ret_energy"]
            regs.f32(base + 0, act)    # total active energy
            regs.f32(base + 2, act)    # fundamental active energy
            regs.f32(base + 4, ret)    # total active returned energy
            regs.f32(base + 6, ret)    # fundamental active returned energy
            regs.f32(base + 8, 0.0)    # lagging reactive energy
            regs.f32(base + 10, 0.0)   # leading reactive energy
            regs.f32(base + 12, act)   # perpetual total active energy
            regs.f32(base + 14, ret)   # perpetual total active returned energy
        return regs.values

    def _em1(self, ctx: CallContext) -> list[int]:
        reading = self._serving()
        scale = self.device.scale_for(ctx)
        regs = _Registers(EM1_STRIDE * EM1_CHANNELS)
        for index in range(EM1_CHANNELS):
            status = em1_status(reading, index, scale)
            errors = _errors(status, "errors")
            base = EM1_STRIDE * index
            regs.u32(base + 0, reading.measured_at)
            regs.flag(base + 2, errors)
            regs.f32(base + 3, status["voltage"])
            regs.f32(base + 5, status["current"])
            regs.f32(base + 7, status["act_power"])
            regs.f32(base + 9, status["aprt_power"])
            regs.f32(base + 11, status["pf"])
            regs.flag(base + 13, {"out_of_range:active_power", "out_of_range:apparent_power"}
                      & set(errors))
            regs.flag(base + 14, "out_of_range:voltage" in errors)
            regs.flag(base + 15, "out_of_range:current" in errors)
            regs.f32(base + 16, status["freq"])
        return regs.values

    def _em1data(self, ctx: CallContext) -> list[int]:
        """``em1data:0..2``; resettable = perpetual and reactive 0.0, as in :meth:`_emdata`."""
        energy = self.device.meter.energy
        timestamp = self._energy_timestamp()
        regs = _Registers(EM1DATA_STRIDE * EM1_CHANNELS)
        for index in range(EM1_CHANNELS):
            status = em1data_status(energy, index)
            act, ret = status["total_act_energy"], status["total_act_ret_energy"]
            base = EM1DATA_STRIDE * index
            regs.u32(base + 0, timestamp)
            regs.f32(base + 2, act)
            regs.f32(base + 4, ret)
            regs.f32(base + 6, 0.0)
            regs.f32(base + 8, 0.0)
            regs.f32(base + 10, act)
            regs.f32(base + 12, ret)
        return regs.values
