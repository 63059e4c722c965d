"""SMA Energy Meter / Sunny Home Manager datagrams (Speedwire protocol 0x6069) → Readings. Pure.

The layout is SMA's published one (the "EMETER-Protokoll" technical
information; meteremu's own encoder, :mod:`meteremu.devices.sma.speedwire`,
writes the same): ``SMA\\0``, then tags of ``(length u16, tag u16)`` up to
the end-of-data tag (length 0, tag 0). Tag 0x0010 holds the protocol id
(0x6069), the SUSy id (u16), the serial (u32), a millisecond tick (u32) and
the channels: a 4-byte OBIS id (channel, index, type, tariff) and a value,
u32 for type 4 (a measurement), u64 for type 8 (a counter); channel 0x90
type 0 is the software version (4 bytes).

Every length is checked against the datagram: a truncated or garbage
datagram raises :class:`DatagramError`, never an IndexError, and a datagram
of another Speedwire protocol (an inverter's 0x6065) is :data:`None`.

Units: powers in 0.1 W, currents in mA, voltages in mV, power factors and
frequency in thousandths, counters in Ws. The meter splits each power by
sign into an import (``+``) and an export (``−``) channel: the signed active
power is import − export.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from meteremu.reading import PhaseReading, Reading

PROTOCOL_EMETER = 0x6069
TAG_DATA = 0x0010
TAG_END = 0x0000
NOMINAL_FREQUENCY = 50.0  # older meters (firmware 1.x) have no frequency channel

MEASUREMENT, COUNTER = 4, 8
SOFTWARE_VERSION_CHANNEL = 0x90

# OBIS indexes: the total block, then L1/L2/L3 at + 20, + 40, + 60.
P_IMPORT, P_EXPORT, S_IMPORT, S_EXPORT = 1, 2, 9, 10
CURRENT, VOLTAGE, POWER_FACTOR = 11, 12, 13
TOTAL_POWER_FACTOR, FREQUENCY = 13, 14
PHASE_OFFSETS = (20, 40, 60)

MAX_VOLTAGE = 1000.0
MAX_CURRENT = 1000.0
FREQUENCY_RANGE = (40.0, 70.0)


class DatagramError(ValueError):
    """A datagram that claims to be a Speedwire one but cannot be read."""


class ValueRefused(ValueError):
    """A decoded value outside what a household meter can measure: the sample is refused."""


@dataclass(frozen=True)
class MeterFrame:
    """One decoded 0x6069 datagram: who sent it and its raw channels."""

    susy_id: int
    serial: int
    tick_ms: int
    channels: dict[tuple[int, int], int] = field(repr=False)
    """``{(OBIS index, type): raw value}`` (tariff 0, channel 0)."""
    sw_version: str | None = None

    def value(self, index: int, kind: int = MEASUREMENT) -> int | None:
        return self.channels.get((index, kind))


def decode(datagram: bytes) -> MeterFrame | None:
    """The meter frame of ``datagram``; None for another Speedwire protocol; DatagramError if unreadable."""
    if len(datagram) < 4 or datagram[:4] != b"SMA\0":
        raise DatagramError("not a Speedwire datagram (no SMA header)")
    pos = 4
    while True:
        if pos + 4 > len(datagram):
            raise DatagramError(f"truncated at byte {pos} (no end-of-data tag)")
        length, tag = struct.unpack_from(">HH", datagram, pos)
        pos += 4
        if tag == TAG_END and length == 0:
            raise DatagramError("no data tag")
        if pos + length > len(datagram):
            raise DatagramError(f"tag 0x{tag:04x} of {length} bytes runs past the datagram's {len(datagram)}")
        if tag == TAG_DATA:
            return _data(datagram[pos:pos + length])
        pos += length


def _data(body: bytes) -> MeterFrame | None:
    if len(body) < 2:
        raise DatagramError("empty data tag")
    (protocol,) = struct.unpack_from(">H", body, 0)
    if protocol != PROTOCOL_EMETER:
        return None
    if len(body) < 12:
        raise DatagramError("energy meter header truncated")
    susy_id, serial, tick = struct.unpack_from(">HII", body, 2)
    channels: dict[tuple[int, int], int] = {}
    sw_version = None
    pos = 12
    while pos < len(body):
        if pos + 4 > len(body):
            raise DatagramError(f"channel id truncated at byte {pos}")
        channel, index, kind, tariff = body[pos:pos + 4]
        pos += 4
        if channel == SOFTWARE_VERSION_CHANNEL and kind == 0:
            size = 4
        elif kind in (MEASUREMENT, COUNTER):
            size = kind
        else:
            raise DatagramError(f"channel {channel}:{index}.{kind}.{tariff} of unknown type")
        if pos + size > len(body):
            raise DatagramError(f"channel {channel}:{index}.{kind}.{tariff} truncated")
        raw = body[pos:pos + size]
        pos += size
        if channel == SOFTWARE_VERSION_CHANNEL:
            release = chr(raw[3]) if 0x20 < raw[3] < 0x7F else "?"
            sw_version = f"{raw[0]}.{raw[1]}.{raw[2]}.{release}"
        elif channel == 0 and tariff == 0:
            channels[(index, kind)] = int.from_bytes(raw, "big")
    return MeterFrame(susy_id, serial, tick, channels, sw_version)


def _scaled(frame: MeterFrame, index: int, scale: float, kind: int = MEASUREMENT) -> float | None:
    raw = frame.value(index, kind)
    return None if raw is None else raw * scale


def _signed(frame: MeterFrame, plus: int, minus: int, scale: float, what: str) -> float:
    a, b = _scaled(frame, plus, scale), _scaled(frame, minus, scale)
    if a is None or b is None:
        raise ValueRefused(f"the datagram has no {what} channels ({plus} and {minus})")
    return a - b


def _bounded(value: float, top: float, what: str) -> float:
    if not math.isfinite(value) or abs(value) > top:
        raise ValueRefused(f"{what} {value:g} is out of range (at most {top:g})")
    return value


def reading(frame: MeterFrame, measured_at: float, max_power: float, invert: bool = False) -> Reading:
    """The three phases and counters of ``frame``; ValueRefused when a value is missing or out of range."""
    sign = -1.0 if invert else 1.0
    freq = _scaled(frame, FREQUENCY, 0.001)
    if freq is None or freq == 0:
        freq = NOMINAL_FREQUENCY
    elif not FREQUENCY_RANGE[0] <= freq <= FREQUENCY_RANGE[1]:
        raise ValueRefused(f"frequency {freq:g} Hz is out of range")
    phases, energy = [], []
    for n, base in enumerate(PHASE_OFFSETS):
        where = f"L{n + 1}"
        p = _bounded(_signed(frame, base + P_IMPORT, base + P_EXPORT, 0.1, f"{where} power"),
                     max_power, f"{where} power (W)")
        s = abs(_bounded(_signed(frame, base + S_IMPORT, base + S_EXPORT, 0.1, f"{where} apparent power"),
                         max_power, f"{where} apparent power (VA)"))
        voltage = _scaled(frame, base + VOLTAGE, 0.001)
        current = _scaled(frame, base + CURRENT, 0.001)
        pf_raw = _scaled(frame, base + POWER_FACTOR, 0.001)
        if voltage is None or current is None:
            raise ValueRefused(f"the datagram has no {where} voltage or current")
        _bounded(voltage, MAX_VOLTAGE, f"{where} voltage (V)")
        _bounded(current, MAX_CURRENT, f"{where} current (A)")
        s = max(s, abs(p))
        pf = pf_raw if pf_raw is not None and pf_raw <= 1.0 else (abs(p) / s if s else 0.0)
        phases.append(PhaseReading(voltage=voltage, current=current, act_power=sign * p, aprt_power=s,
                                   pf=math.copysign(pf, sign * p) if p else 0.0, freq=freq))
        imported = _scaled(frame, base + P_IMPORT, 1 / 3600, COUNTER)
        exported = _scaled(frame, base + P_EXPORT, 1 / 3600, COUNTER)
        if imported is not None and exported is not None:
            energy.append((exported, imported) if invert else (imported, exported))
    return Reading(phases=tuple(phases), measured_at=measured_at,
                   energy=tuple(energy) if len(energy) == len(PHASE_OFFSETS) else None)
