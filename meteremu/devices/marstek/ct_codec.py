"""Marstek CT002/CT003 wire format: framing, requests and responses (pure).

Facts from shared/specs/batteries.md §3.1 (the peers' protocol notes; no
code carried over). A frame is::

    SOH STX <LEN ascii digits> |f1|f2|…|fN ETX <2 ascii hex: XOR>

``LEN`` counts the whole frame, its own digits and the checksum included, so
it is found by iteration (:func:`frame_length`). The XOR covers every byte
from SOH through ETX. The real CT writes the checksum in upper case; some
firmware writes it with ``%2X`` (a space for a zero high nibble): both are
read, any case.

A battery asks (:class:`CtRequest`): its type, its MAC, the CT type it
expects, the CT MAC it is paired with, its phase (``A``/``B``/``C``, ``D``
for the combined bucket, ``0`` or empty while it inspects) and its own power
(W, + discharge), and a B2500 adds ``participate``. The CT answers
(:class:`CtResponse`) with 24 fields (CT002) or 28 (CT003), identity
*reversed* (CT first), the grid per phase and total, the battery count per
bucket, RSSI, ``info_idx`` (the battery dedupes on it) and the charge and
discharge sums per bucket.

Everything arriving from the network is hostile until proven otherwise:
:func:`parse_request` raises :class:`FrameError` with the reason for any
byte string that is not a well-formed request, never anything else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

SOH, STX, ETX = 0x01, 0x02, 0x03
MAX_FRAME = 512  # bytes: a 28-field response is ~180; anything much longer is not a CT frame
MIN_FRAME = 10
CT002_TYPE = "HME-4"
CT003_TYPE = "HME-3"
Kind = Literal["ct002", "ct003"]
RESPONSE_FIELDS: dict[str, int] = {"ct002": 24, "ct003": 28}
INT16 = (-32768, 32767)
INT32 = (-(2**31), 2**31 - 1)
PHASES = ("A", "B", "C")  # the bucket of phase index 0, 1, 2; "D" is the combined (ABC) bucket

_DIGITS = re.compile(rb"[0-9]{1,3}")
_MAC = re.compile(r"[0-9A-Fa-f]{12}")
_TYPE = re.compile(r"[A-Za-z0-9_.+-]{0,16}")
_INT = re.compile(r"[+-]?[0-9]{1,11}")
_HEX2 = re.compile(rb"[0-9A-Fa-f]{2}")


class FrameError(ValueError):
    """A datagram that is not a CT frame (the reason is the message)."""


def xor(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def frame_length(payload_len: int) -> int:
    """Total frame length for a payload of ``payload_len`` bytes (LEN counts its own digits)."""
    base = 1 + 1 + payload_len + 1 + 2
    length = base
    while True:
        total = base + len(str(length))
        if total == length:
            return length
        length = total


def encode_frame(fields: Sequence[str]) -> bytes:
    """The frame carrying ``fields`` (each ASCII, without ``|``)."""
    for value in fields:
        if "|" in value or not value.isascii():
            raise ValueError(f"field {value!r} cannot be framed")
    payload = "".join("|" + value for value in fields).encode("ascii")
    head = bytes((SOH, STX)) + str(frame_length(len(payload))).encode("ascii") + payload + bytes((ETX,))
    return head + b"%02X" % xor(head)


def parse_checksum(text: bytes) -> int:
    """Two hex digits, any case; a leading space stands for a zero high nibble."""
    if text[:1] == b" ":
        text = b"0" + text[1:]
    if not _HEX2.fullmatch(text):
        raise FrameError(f"checksum {text!r} is not two hex digits")
    return int(text, 16)


def decode_frame(data: bytes) -> list[str]:
    """The fields of one frame; :class:`FrameError` says why it is not one."""
    if len(data) < MIN_FRAME:
        raise FrameError(f"{len(data)} bytes: too short for a frame")
    if len(data) > MAX_FRAME:
        raise FrameError(f"{len(data)} bytes: too long for a CT frame")
    if data[0] != SOH or data[1] != STX:
        raise FrameError("does not start with SOH STX")
    if data[-3] != ETX:
        raise FrameError("no ETX before the checksum")
    match = _DIGITS.match(data, 2)
    if match is None:
        raise FrameError("no length digits after SOH STX")
    if int(match.group()) != len(data):
        raise FrameError(f"length field says {int(match.group())}, frame has {len(data)} bytes")
    expected = xor(data[:-2])
    if parse_checksum(data[-2:]) != expected:
        raise FrameError(f"checksum {data[-2:]!r} does not match {expected:02X}")
    body = data[match.end():-3]
    if not body.startswith(b"|"):
        raise FrameError("no field separator after the length")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("fields are not ASCII") from None
    if not text.isprintable():
        raise FrameError("fields hold control characters")
    return text[1:].split("|")


def _int(value: str, name: str, bounds: tuple[int, int] = INT32) -> int:
    if not _INT.fullmatch(value):
        raise FrameError(f"{name} {value!r} is not an integer")
    number = int(value)
    if not bounds[0] <= number <= bounds[1]:
        raise FrameError(f"{name} {number} is out of range")
    return number


# -- requests (battery → CT) ----------------------------------------------------------------
@dataclass(frozen=True)
class CtRequest:
    battery_type: str
    battery_mac: str  # 12 hex digits, upper case
    ct_type: str  # may be empty (new firmware, AstraMeter #552)
    ct_mac: str  # 12 hex digits upper case, or "" when the battery sent none
    phase: str  # "A", "B", "C", "D", or "" (unassigned: "0" or empty on the wire)
    power: int  # W, + discharge
    participate: bool | None = None  # B2500 only

    def fields(self) -> list[str]:
        phase = self.phase or "0"
        out = [self.battery_type, self.battery_mac, self.ct_type, self.ct_mac, phase, str(self.power)]
        if self.participate is not None:
            out.append("1" if self.participate else "0")
        return out


def encode_request(request: CtRequest) -> bytes:
    return encode_frame(request.fields())


def parse_request(data: bytes) -> CtRequest:
    """A battery's request, validated field by field; :class:`FrameError` otherwise."""
    fields = decode_frame(data)
    if len(fields) not in (6, 7):
        raise FrameError(f"{len(fields)} fields: a request has 6 or 7")
    battery_type, battery_mac, ct_type, ct_mac, phase, power = fields[:6]
    if not battery_type or not _TYPE.fullmatch(battery_type):
        raise FrameError(f"battery type {battery_type!r} is not a model name")
    if not _MAC.fullmatch(battery_mac):
        raise FrameError(f"battery MAC {battery_mac!r} is not 12 hex digits")
    if not _TYPE.fullmatch(ct_type):
        raise FrameError(f"CT type {ct_type!r} is not a model name")
    if ct_mac and not _MAC.fullmatch(ct_mac):
        raise FrameError(f"CT MAC {ct_mac!r} is not 12 hex digits")
    phase = phase.upper()
    if phase == "0":
        phase = ""
    if phase not in ("", "A", "B", "C", "D"):
        raise FrameError(f"phase {phase!r} is not A, B, C, D or 0")
    participate = None
    if len(fields) == 7:
        if fields[6] not in ("0", "1"):
            raise FrameError(f"participate {fields[6]!r} is not 0 or 1")
        participate = fields[6] == "1"
    return CtRequest(battery_type, battery_mac.upper(), ct_type, ct_mac.upper(), phase,
                     _int(power, "power"), participate)


# -- responses (CT → battery) ------------------------------------------------------------------
@dataclass(frozen=True)
class CtResponse:
    ct_type: str
    ct_mac: str
    battery_type: str
    battery_mac: str
    phase_power: tuple[int, int, int]  # W per phase, + import (or the adjustment under control)
    total_power: int
    chrg_nb: tuple[int, int, int, int]  # batteries per bucket: A, B, C, ABC
    wifi_rssi: int = -50
    info_idx: int = 0  # 0-255
    chrg_power: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # x, A, B, C, ABC (sums <= 0)
    dchrg_power: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # x, A, B, C, ABC (sums >= 0)
    energy: tuple[int, int, int, int] | None = None  # CT003: low/normal price in, low/normal out

    def fields(self, kind: Kind) -> list[str]:
        bounds = INT16 if kind == "ct002" else INT32
        powers = [_clamp(p, bounds) for p in (*self.phase_power, self.total_power)]
        out = [self.ct_type, self.ct_mac, self.battery_type, self.battery_mac]
        out += [str(v) for v in powers]
        out += [str(v) for v in self.chrg_nb]
        out += [str(self.wifi_rssi), str(self.info_idx % 256)]
        out += [str(_clamp(v, INT32)) for v in (*self.chrg_power, *self.dchrg_power)]
        if kind == "ct003":
            out += [str(v) for v in (self.energy or (0, 0, 0, 0))]
        return out


def _clamp(value: int, bounds: tuple[int, int]) -> int:
    return max(bounds[0], min(bounds[1], int(value)))


def encode_response(response: CtResponse, kind: Kind) -> bytes:
    return encode_frame(response.fields(kind))


def parse_response(data: bytes) -> tuple[Kind, CtResponse]:
    """A CT's answer (24 fields: CT002, 28: CT003); :class:`FrameError` otherwise."""
    fields = decode_frame(data)
    kind: Kind
    if len(fields) == 24:
        kind = "ct002"
    elif len(fields) == 28:
        kind = "ct003"
    else:
        raise FrameError(f"{len(fields)} fields: a response has 24 (CT002) or 28 (CT003)")
    numbers = [_int(v, f"field {i + 1}") for i, v in enumerate(fields[4:], start=4)]
    if not 0 <= numbers[9] <= 255:
        raise FrameError(f"info_idx {numbers[9]} is out of 0-255")
    energy = None
    if kind == "ct003":
        energy = (numbers[20], numbers[21], numbers[22], numbers[23])
    return kind, CtResponse(
        ct_type=fields[0], ct_mac=fields[1], battery_type=fields[2], battery_mac=fields[3],
        phase_power=(numbers[0], numbers[1], numbers[2]), total_power=numbers[3],
        chrg_nb=(numbers[4], numbers[5], numbers[6], numbers[7]), wifi_rssi=numbers[8], info_idx=numbers[9],
        chrg_power=(numbers[10], numbers[11], numbers[12], numbers[13], numbers[14]),
        dchrg_power=(numbers[15], numbers[16], numbers[17], numbers[18], numbers[19]), energy=energy)


def phase_field(phase: str) -> int | None:
    """Index (0-2) of the phase field a battery of this bucket reads; None for ``D``/unassigned."""
    return PHASES.index(phase) if phase in PHASES else None
