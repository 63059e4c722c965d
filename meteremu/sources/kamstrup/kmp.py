"""Kamstrup KMP: a small, pure codec (no I/O, no reactor).

Why not PyKMP: pykmp 0.0.2 (the only packaged library) un-stuffs a frame
with one ``bytes.replace`` per escape sequence, so a stuffed ``1B`` followed by
a byte that happens to complete another escape is decoded wrongly
(``40 3F 1B E4 F9 0D`` → ``3F 06`` instead of ``3F 1B F9``); its client is
blocking pyserial. The codec is ~200 lines, so it lives here, fully tested
with the vectors of the Kamstrup KMP document (PyKMP's tests,
``shared/specs/sources-sinks.md`` §3 and checks 16-19).

Wire format::

    request   80 | dst CID data… CRC-hi CRC-lo | 0D      (dst 3F = heat meter)
    response  40 | dst CID data… CRC-hi CRC-lo | 0D
    ACK       06                                         (no frame)

* CRC-16/CCITT, polynomial 0x1021, init 0, not reflected ("XModem"), over
  dst + CID + data, sent big-endian; a body including its own CRC checks to 0.
* After the CRC is appended, any of ``06 0D 1B 40 80`` inside the frame is
  sent as ``1B`` followed by the byte XOR FF.
* GetRegister (CID 10): request data = count (1-8) + 2-byte register ids;
  response data = per register: id (2), unit (1), length n (1), sign/exponent
  (1), mantissa (n bytes, big-endian). Value = ±mantissa × 10^(±exponent):
  bit 7 of the sign/exponent byte = negative value, bit 6 = negative
  exponent, bits 0-5 = exponent.

The meter (or a half-duplex optical head) echoes the request on the line:
:class:`FrameReader` skips everything until a response start byte ``40``, which
cannot occur unstuffed inside a request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

START_TO_METER = 0x80
START_FROM_METER = 0x40
STOP = 0x0D
ACK = 0x06
ESCAPE = 0x1B
STUFFED = frozenset({ACK, STOP, ESCAPE, START_FROM_METER, START_TO_METER})

HEAT_METER = 0x3F

CID_GET_TYPE = 0x01
CID_GET_SERIAL = 0x02
CID_GET_REGISTER = 0x10

MAX_REGISTERS_PER_REQUEST = 8
MAX_FRAME = 512  # stuffed bytes; a reply to 8 registers is < 150


class KmpError(ValueError):
    """A frame or payload that does not decode (bad CRC, stuffing, length…)."""


# -- CRC ---------------------------------------------------------------------------


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _table()


def crc16(data: bytes) -> int:
    """CRC-16/CCITT "XModem" (poly 0x1021, init 0, no reflection, no final xor)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


# -- byte stuffing and frames ------------------------------------------------------


def stuff(data: bytes) -> bytes:
    out = bytearray()
    for byte in data:
        if byte in STUFFED:
            out += bytes((ESCAPE, byte ^ 0xFF))
        else:
            out.append(byte)
    return bytes(out)


def unstuff(data: bytes) -> bytes:
    """Undo :func:`stuff` in one pass; a dangling or unknown escape is an error."""
    out = bytearray()
    escaped = False
    for byte in data:
        if escaped:
            original = byte ^ 0xFF
            if original not in STUFFED:
                raise KmpError(f"invalid escape sequence 1B {byte:02X}")
            out.append(original)
            escaped = False
        elif byte == ESCAPE:
            escaped = True
        else:
            out.append(byte)
    if escaped:
        raise KmpError("frame ends inside an escape sequence")
    return bytes(out)


def encode_frame(body: bytes, start: int = START_TO_METER) -> bytes:
    """``body`` (destination, CID, data) → a complete stuffed frame with CRC."""
    if not body:
        raise KmpError("empty frame body")
    crc = crc16(body)
    return bytes((start,)) + stuff(body + crc.to_bytes(2, "big")) + bytes((STOP,))


def encode_request(cid: int, data: bytes = b"", address: int = HEAT_METER) -> bytes:
    return encode_frame(bytes((address, cid)) + data, START_TO_METER)


def get_type_request(address: int = HEAT_METER) -> bytes:
    return encode_request(CID_GET_TYPE, b"", address)


def get_serial_request(address: int = HEAT_METER) -> bytes:
    return encode_request(CID_GET_SERIAL, b"", address)


def get_register_request(registers: Sequence[int], address: int = HEAT_METER) -> bytes:
    """GetRegister for 1-8 register ids (0-65535)."""
    if not 1 <= len(registers) <= MAX_REGISTERS_PER_REQUEST:
        raise KmpError(f"a GetRegister request holds 1 to {MAX_REGISTERS_PER_REQUEST} registers")
    data = bytearray((len(registers),))
    for register in registers:
        if not 0 <= register <= 0xFFFF:
            raise KmpError(f"register id out of range: {register}")
        data += register.to_bytes(2, "big")
    return encode_request(CID_GET_REGISTER, bytes(data), address)


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame: destination address, command id and its data."""

    address: int
    cid: int
    data: bytes


def decode_frame(frame: bytes, start: int = START_FROM_METER) -> Frame:
    """A complete frame (start byte … 0D) → :class:`Frame`; raise :class:`KmpError`."""
    if len(frame) < 2 or frame[0] != start or frame[-1] != STOP:
        raise KmpError("not a framed message (start/stop byte missing)")
    body = unstuff(frame[1:-1])
    if len(body) < 4:
        raise KmpError(f"frame too short ({len(body)} bytes after un-stuffing)")
    if crc16(body) != 0:
        expected = crc16(body[:-2])
        raise KmpError(f"CRC mismatch: frame has {body[-2:].hex().upper()}, computed {expected:04X}")
    return Frame(address=body[0], cid=body[1], data=body[2:-2])


class FrameReader:
    """Split a byte stream into meter frames (``40 … 0D``) and bare ACKs.

    Bytes before a start byte (the echoed request, line noise) are skipped
    and counted in ``skipped``. A frame longer than ``MAX_FRAME`` is dropped.
    """

    def __init__(self, start: int = START_FROM_METER) -> None:
        self.start = start
        self._buffer = bytearray()
        self._in_frame = False
        self.skipped = 0

    def reset(self) -> None:
        self._buffer.clear()
        self._in_frame = False

    def feed(self, data: bytes) -> list[bytes]:
        """Return the complete frames (and ``b"\\x06"`` for an ACK) in ``data``."""
        out: list[bytes] = []
        for byte in data:
            if not self._in_frame:
                if byte == self.start:
                    self._in_frame = True
                    self._buffer = bytearray((byte,))
                elif byte == ACK:
                    out.append(bytes((ACK,)))
                else:
                    self.skipped += 1
                continue
            if byte == self.start:  # a new frame starts: the previous one was cut
                self.skipped += len(self._buffer)
                self._buffer = bytearray((byte,))
                continue
            self._buffer.append(byte)
            if byte == STOP:
                out.append(bytes(self._buffer))
                self.reset()
            elif len(self._buffer) > MAX_FRAME:
                self.skipped += len(self._buffer)
                self.reset()
        return out


# -- values --------------------------------------------------------------------------


def decode_number(data: bytes) -> Decimal:
    """The KMP float: length n, sign/exponent byte, n mantissa bytes → exact Decimal."""
    if len(data) < 3 or data[0] == 0 or len(data) != data[0] + 2:
        raise KmpError(f"bad number encoding {data.hex().upper()}")
    si_se = data[1]
    mantissa = int.from_bytes(data[2:], "big")
    exponent = si_se & 0x3F
    if si_se & 0x40:
        exponent = -exponent
    sign = 1 if si_se & 0x80 else 0
    return Decimal((sign, tuple(int(d) for d in str(mantissa)), exponent))


def encode_number(value: Decimal | int | str, length: int = 4) -> bytes:
    """Inverse of :func:`decode_number` (used by the tests' fake meter)."""
    number = Decimal(value)
    sign, digits, exponent = number.as_tuple()
    if not isinstance(exponent, int):
        raise KmpError(f"not a finite number: {value!r}")
    mantissa = int("".join(map(str, digits)) or "0")
    while mantissa and mantissa.bit_length() > 8 * length and exponent < 63:
        if mantissa % 10:
            raise KmpError(f"{value!r} does not fit {length} mantissa bytes")
        mantissa //= 10
        exponent += 1
    if mantissa.bit_length() > 8 * length or abs(exponent) > 63:
        raise KmpError(f"{value!r} does not fit the KMP number format")
    si_se = (0x80 if sign else 0) | (0x40 if exponent < 0 else 0) | abs(exponent)
    return bytes((length, si_se)) + mantissa.to_bytes(length, "big")


@dataclass(frozen=True, slots=True)
class RegisterValue:
    register: int
    unit: int
    value: Decimal


def decode_registers(data: bytes) -> dict[int, RegisterValue]:
    """GetRegister response data → ``{register id: RegisterValue}``."""
    out: dict[int, RegisterValue] = {}
    pos = 0
    while pos < len(data):
        if len(data) - pos < 6:
            raise KmpError(f"truncated register entry at byte {pos}")
        register = int.from_bytes(data[pos:pos + 2], "big")
        unit = data[pos + 2]
        length = data[pos + 3]
        end = pos + 5 + length
        if length == 0 or end > len(data):
            raise KmpError(f"register {register:#06x}: bad value length {length}")
        out[register] = RegisterValue(register, unit, decode_number(data[pos + 3:end]))
        pos = end
    return out


def encode_registers(values: Iterable[tuple[int, int, Decimal | int | str]], length: int = 4) -> bytes:
    """``[(register, unit, value)]`` → GetRegister response data (for fakes and tests)."""
    out = bytearray()
    for register, unit, value in values:
        out += register.to_bytes(2, "big") + bytes((unit,)) + encode_number(value, length)
    return bytes(out)


def decode_serial(data: bytes) -> str:
    """GetSerial response data: a 32-bit big-endian number."""
    if len(data) != 4:
        raise KmpError(f"GetSerial answer of {len(data)} bytes, expected 4")
    return str(int.from_bytes(data, "big"))


# -- units ----------------------------------------------------------------------------

UNITS: dict[int, str] = {
    0x00: "", 0x01: "Wh", 0x02: "kWh", 0x03: "MWh", 0x04: "GWh", 0x05: "J", 0x06: "kJ",
    0x07: "MJ", 0x08: "GJ", 0x09: "cal", 0x0A: "kcal", 0x0B: "Mcal", 0x0C: "Gcal",
    0x0D: "varh", 0x0E: "kvarh", 0x0F: "Mvarh", 0x10: "Gvarh", 0x11: "VAh", 0x12: "kVAh",
    0x13: "MVAh", 0x14: "GVAh", 0x15: "kW", 0x16: "kW", 0x17: "MW", 0x18: "GW",
    0x19: "kvar", 0x1A: "kvar", 0x1B: "Mvar", 0x1C: "Gvar", 0x1D: "VA", 0x1E: "kVA",
    0x1F: "MVA", 0x20: "GVA", 0x21: "V", 0x22: "A", 0x23: "kV", 0x24: "kA", 0x25: "C",
    0x26: "K", 0x27: "l", 0x28: "m3", 0x29: "l/h", 0x2A: "m3/h", 0x2B: "m3xC",
    0x2C: "ton", 0x2D: "ton/h", 0x2E: "h", 0x2F: "hh:mm:ss", 0x30: "yy:mm:dd",
    0x31: "yyyy:mm:dd", 0x32: "mm:dd", 0x33: "", 0x34: "bar", 0x35: "RTC", 0x36: "ASCII",
    0x37: "m3x10", 0x38: "tonx10", 0x39: "GJx10", 0x3A: "min", 0x3B: "bitfield", 0x3C: "s",
    0x3D: "ms", 0x3E: "days", 0x3F: "RTC-Q", 0x40: "datetime",
}
"""Unit codes (PyKMP ``constants.py``; 0x15 is "kW" there, "W" in some other copies)."""

# Conversions to the unit a published value uses: (quantity, factor).
_TO_KWH = {"Wh": Decimal("0.001"), "kWh": Decimal(1), "MWh": Decimal(1000), "GWh": Decimal(10**6),
           "J": Decimal(1) / Decimal(3_600_000), "kJ": Decimal(1) / Decimal(3600),
           "MJ": Decimal(1) / Decimal("3.6"), "GJ": Decimal(1000) / Decimal("3.6"),
           "GJx10": Decimal(10000) / Decimal("3.6"), "kcal": Decimal("0.001163"),
           "Mcal": Decimal("1.163"), "Gcal": Decimal(1163)}
_TO_W = {"kW": Decimal(1000), "MW": Decimal(10**6), "GW": Decimal(10**9)}
_TO_M3 = {"l": Decimal("0.001"), "m3": Decimal(1), "m3x10": Decimal(10)}
_TO_LPH = {"l/h": Decimal(1), "m3/h": Decimal(1000)}
_SAME = {"C": "c", "K": "k", "h": "h", "bar": "bar", "": ""}

CONVERSIONS: dict[str, tuple[str, dict[str, Decimal]]] = {
    "kwh": ("kWh", _TO_KWH), "w": ("W", _TO_W), "m3": ("m3", _TO_M3), "lph": ("l/h", _TO_LPH),
}


def convert(value: Decimal, unit_code: int, quantity: str) -> Decimal | None:
    """``value`` in ``unit_code`` as ``quantity`` (kwh, w, m3, lph, c, k, h, bar, "").

    None when the unit does not fit the quantity (the caller then publishes
    the raw value under a unit-suffixed name).
    """
    unit = UNITS.get(unit_code)
    if unit is None:
        return None
    if quantity in CONVERSIONS:
        factor = CONVERSIONS[quantity][1].get(unit)
        return None if factor is None else value * factor
    return value if _SAME.get(unit) == quantity else None


def unit_slug(unit_code: int) -> str:
    """A name-safe form of a unit, for raw values: ``m3/h`` → ``m3_h``."""
    unit = UNITS.get(unit_code, f"unit{unit_code:02x}")
    return "".join(ch if ch.isalnum() else "_" for ch in unit).strip("_").lower() or "raw"
