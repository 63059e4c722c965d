"""SMA Energy Meter datagrams (Speedwire protocol 0x6069), as a pure encoder.

Layout (SMA's "EMETER-Protokoll" TI, batteries.md §3.3; big-endian):

* ``SMA\\0``; tag 0x02A0 of length 4 holding group 1;
* a tag 0x0010 whose length counts the protocol id (0x6069), SUSy id (u16),
  serial (u32), a millisecond tick (u32, wraps) and the channels;
* channels: a 4-byte OBIS id (channel 0, index, type, tariff 0) and a value,
  u32 for type 4 (a measurement), u64 for type 8 (a counter); the software
  version as channel 0x90 type 0;
* the end-of-data tag (4 zero bytes).

Every channel of a real meter is sent, in its order, so a consumer that
reads fixed offsets finds them. What meteremu's readings do not measure is
sent as zero: reactive power (Q is derived as ``sqrt(S² − P²)`` on the side
of the active power, which is all a reading can say) and the reactive and
apparent energy counters. Powers are split by sign into the import (``+``)
and export (``−``) channels, as the meter does.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from meteremu.devices.stale import Unavailable
from meteremu.reading import PhaseReading, Reading

MULTICAST_GROUP = "239.12.255.254"
PORT = 9522
PROTOCOL_EMETER = 0x6069
DEFAULT_SUSY_ID = 270  # SMA Energy Meter 1.0
DEFAULT_SW_VERSION = (1, 2, 4, "R")

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF

# OBIS indexes per block: total and L1/L2/L3 (each + 20).
_P_IMPORT, _P_EXPORT, _Q_IMPORT, _Q_EXPORT, _S_IMPORT, _S_EXPORT = 1, 2, 3, 4, 9, 10
_PHASE_OFFSET = (20, 40, 60)


def _clamped(value: float, scale: float, top: int, what: str) -> int:
    """``value × scale`` as an unsigned integer, saturating at ``top`` (as a meter's register does)."""
    if not math.isfinite(value):
        raise Unavailable(f"the meter's {what} is not a finite number")
    scaled = value * scale
    if scaled >= top:  # also a finite value that overflowed to inf when scaled
        return top
    return max(0, int(round(scaled)))


def _u32(value: float, scale: float) -> int:
    return _clamped(value, scale, U32, "reading")


def _u64(value: float, scale: float) -> int:
    return _clamped(value, scale, U64, "energy counter")


def _split(value: float) -> tuple[float, float]:
    """``(import, export)`` parts of a signed power."""
    return (value, 0.0) if value >= 0 else (0.0, -value)


def _reactive(active: float, apparent: float) -> float:
    if not (math.isfinite(active) and math.isfinite(apparent)):
        raise Unavailable("the meter reading is not a finite number")
    q = math.sqrt(max(apparent * apparent - active * active, 0.0))
    return math.copysign(q, active) if active else 0.0


def _block(base: int, active: float, apparent: float, import_wh: float, export_wh: float
           ) -> list[tuple[int, int, int]]:
    """P, Q and S of one block (total or a phase): power (×10 W) and counters (Ws)."""
    p_in, p_out = _split(active)
    q_in, q_out = _split(_reactive(active, apparent))
    s_in, s_out = (abs(apparent), 0.0) if active >= 0 else (0.0, abs(apparent))
    channels = []
    for index, power, counter in ((_P_IMPORT, p_in, import_wh), (_P_EXPORT, p_out, export_wh),
                                  (_Q_IMPORT, q_in, 0.0), (_Q_EXPORT, q_out, 0.0),
                                  (_S_IMPORT, s_in, 0.0), (_S_EXPORT, s_out, 0.0)):
        channels.append((base + index, 4, _u32(power, 10)))
        channels.append((base + index, 8, _u64(counter, 3600)))
    return channels


def _pf(active: float, apparent: float) -> float:
    return min(1.0, abs(active) / apparent) if apparent > 0 and math.isfinite(apparent) else 1.0


def channels(reading: Reading, energy: Sequence[tuple[float, float]]) -> list[tuple[int, int, int]]:
    """``(index, type, raw value)`` of every channel, in the meter's order.

    ``energy`` is ``(import_wh, export_wh)`` per phase (the Meter's counters).
    """
    phases = [reading.phase(i) for i in range(3)]
    per_phase = [energy[i] if i < len(energy) else (0.0, 0.0) for i in range(3)]
    total_p = sum(p.act_power for p in phases)
    total_s = sum(p.aprt_power for p in phases)
    out = _block(0, total_p, total_s, sum(e[0] for e in per_phase), sum(e[1] for e in per_phase))
    freq = next((p.freq for p in phases if p.freq), 50.0)
    out.append((13, 4, _u32(_pf(total_p, total_s), 1000)))
    out.append((14, 4, _u32(freq, 1000)))
    for offset, phase, (imp, exp) in zip(_PHASE_OFFSET, phases, per_phase, strict=True):
        out.extend(_block(offset, phase.act_power, phase.aprt_power, imp, exp))
        out.extend(_phase_meters(offset, phase))
    return out


def _phase_meters(offset: int, phase: PhaseReading) -> list[tuple[int, int, int]]:
    return [(offset + 11, 4, _u32(abs(phase.current), 1000)),
            (offset + 12, 4, _u32(phase.voltage, 1000)),
            (offset + 13, 4, _u32(abs(phase.pf) if phase.pf else _pf(phase.act_power, phase.aprt_power),
                                  1000))]


def encode(susy_id: int, serial: int, tick_ms: int, reading: Reading,
           energy: Sequence[tuple[float, float]],
           sw_version: tuple[int, int, int, str] = DEFAULT_SW_VERSION) -> bytes:
    """One datagram; :class:`~meteremu.devices.stale.Unavailable` when the reading cannot be sent."""
    if not 0 <= susy_id <= 0xFFFF or not 0 <= serial <= U32:
        raise ValueError(f"susy id {susy_id} / serial {serial} out of range")
    body = bytearray(struct.pack(">HHII", PROTOCOL_EMETER, susy_id, serial, tick_ms & U32))
    # In the meter's order: blocks by index, each measurement before its counter.
    for index, kind, value in channels(reading, energy):
        body += struct.pack(">BBBB", 0, index, kind, 0)
        body += struct.pack(">I" if kind == 4 else ">Q", value)
    major, minor, build, release = sw_version
    body += bytes((0x90, 0, 0, 0, major, minor, build, ord(release[:1] or "R")))
    return b"SMA\0" + struct.pack(">HHI", 4, 0x02A0, 1) + struct.pack(">HH", len(body), 0x0010) + \
        bytes(body) + b"\0\0\0\0"
