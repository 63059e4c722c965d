"""SML (Smart Message Language) frames of German/Austrian smart meters → Readings. Pure.

Shared by ``tibber_pulse`` (the bridge hands out the last SML frame its
infrared head read) and ``sml`` (an infrared head on a serial port or a TCP
bridge). Decoding is `smllib`'s (`SmlStreamReader`: escape sequences, X.25
CRC, the TLV lists); the values are then taken exactly (integer value × 10^scaler,
no float rounding) by OBIS code:

=========  =============  ==========================================
OBIS       key            meaning
=========  =============  ==========================================
1.8.0      energy_import  lifetime import counter (Wh; unit 30)
2.8.0      energy_export  lifetime export counter (Wh)
16.7.0     power          total active power (W; unit 27), signed
36.7.0     a_power        phase L1 active power (W), signed
56.7.0     b_power        phase L2
76.7.0     c_power        phase L3
32/52/72.7.0  a/b/c_voltage   V (unit 35)
31/51/71.7.0  a/b/c_current   A (unit 33)
14.7.0     frequency      Hz (unit 44)
=========  =============  ==========================================

Power sign: + import, − export, as meters that send 16.7.0 signed do (most
modern eHZ, EBZ, EMH, ISKRA, Holley); ``invert`` for those that do not.
A meter that sends no power (its PIN not entered: only counters) is refused
with that reason, never served as 0 W.

Noise (the bridge and optical heads deliver partial frames, a CRC error, a
list smllib cannot decode) is a :class:`SmlError`; a unit that does not fit
the OBIS code, or a value out of range, a :class:`ValueProblem` — the frame is
not served.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from meteremu.reading import Reading
from meteremu.sources.jsonfields import DEFAULT_MAX_POWER, ValueProblem, range_problem
from meteremu.sources.values import KEY_KIND, PHASES, reading_parts

OBIS_KEYS: dict[str, str] = {
    "0100010800ff": "energy_import", "0100020800ff": "energy_export",
    "0100100700ff": "power", "0100240700ff": "a_power", "0100380700ff": "b_power", "01004c0700ff": "c_power",
    "0100200700ff": "a_voltage", "0100340700ff": "b_voltage", "0100480700ff": "c_voltage",
    "01001f0700ff": "a_current", "0100330700ff": "b_current", "0100470700ff": "c_current",
    "01000e0700ff": "frequency",
}
"""OBIS codes (hex, as smllib writes them) → quantity keys."""

UNIT_CODES: dict[str, int] = {"power": 27, "energy": 30, "voltage": 35, "current": 33, "frequency": 44}
"""DLMS unit codes each kind must carry when the meter sends one."""

MAX_FRAME = 64 * 1024
"""An SML frame of a household meter is a few hundred bytes."""

STREAM_LIMIT = 8 * 1024
"""A stream's frame that has not ended within this many bytes is noise (smllib keeps up to 50 KiB)."""


NO_POWER = ("the frame has no power value (OBIS 16.7.0 or 36/56/76.7.0): "
            "the meter may need its PIN entered to send it")


def smllib_problem() -> str | None:
    """Why the SML sources cannot run here (smllib missing), found without importing it."""
    if importlib.util.find_spec("smllib") is None:
        return "smllib installed first (GPL-3.0; an extra: pip install 'meteremu[sml]')"
    return None


class SmlError(ValueError):
    """Bytes that hold no decodable SML frame (noise, a cut or damaged frame)."""


def obis_name(code: str) -> str:
    """``0100100700ff`` → ``1.0:16.7.0*255`` (for messages)."""
    try:
        b = bytes.fromhex(code)
    except ValueError:
        return code
    if len(b) != 6:
        return code
    return f"{b[0]}-{b[1]}:{b[2]}.{b[3]}.{b[4]}*{b[5]}"


@dataclass(frozen=True)
class SmlValues:
    """What one frame said, by quantity key (canonical units), and the meter's id if it sent one."""

    values: dict[str, float]
    meter_id: str | None = None

    def has_power(self) -> bool:
        return any(k == "power" or k.endswith("_power") for k in self.values)

    def reading(self, measured_at: float, invert: bool = False) -> Reading:
        """The Reading; :class:`ValueProblem` when the frame has no power value."""
        keys = set(self.values)
        if "power" in keys and any(f"{p}_power" in keys for p in PHASES):
            keys -= {"power"}  # per phase when the meter gives it (the total is their sum)
        if not self.has_power():
            raise ValueProblem(NO_POWER)
        phases, energy = reading_parts(keys, self.values.get, invert)
        return Reading(phases=phases, measured_at=measured_at, energy=energy)


def frames(data: bytes) -> list[Any]:
    """Every complete SML frame in ``data`` (smllib's ``SmlFrame``); noise before, between and after is skipped."""
    from smllib.errors import SmlLibException
    from smllib.reader import SmlStreamReader

    if len(data) > MAX_FRAME * 4:
        raise SmlError(f"more than {MAX_FRAME * 4} bytes")
    reader = SmlStreamReader()
    reader.add(data)
    found: list[Any] = []
    for _ in range(64):
        try:
            frame = reader.get_frame()
        except SmlLibException as exc:
            raise SmlError(f"damaged SML frame ({type(exc).__name__})") from None
        if frame is None:
            break
        found.append(frame)
    return found


def entries_of(frame: Any) -> list[tuple[str, Any, Any, Any]]:
    """``(obis, value, unit, scaler)`` of every value entry of a frame; :class:`SmlError` if undecodable."""
    from smllib.errors import SmlLibException

    try:
        return [(e.obis, e.value, e.unit, e.scaler) for e in frame.get_obis()]
    except (SmlLibException, ValueError, TypeError, IndexError, KeyError, AttributeError, RecursionError) as exc:
        # smllib walks the frame's TLV tree as the bytes say; damaged (CRC-valid) frames make it
        # fail in any of these ways, or hand back a text where an entry belongs (AttributeError).
        raise SmlError(f"undecodable SML list ({type(exc).__name__})") from None


def values_of(entries: Iterable[tuple[str, Any, Any, Any]], max_power: float = DEFAULT_MAX_POWER) -> SmlValues:
    """The known OBIS values, exact and checked (:class:`ValueProblem` names the first bad one)."""
    values: dict[str, float] = {}
    meter_id: str | None = None
    for obis, value, unit, scaler in entries:
        if obis == "0100600100ff" and isinstance(value, str):
            meter_id = value
        key = OBIS_KEYS.get(obis)
        if key is None:
            continue
        name = f"{obis_name(obis)} ({key})"
        kind = KEY_KIND[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueProblem(f"{name}: {type(value).__name__} is not a number")
        if scaler is not None and (not isinstance(scaler, int) or not -20 <= scaler <= 20):
            raise ValueProblem(f"{name}: scaler {scaler!r} is out of range")
        expected = UNIT_CODES.get(kind)
        if unit is not None and expected is not None and unit != expected:
            raise ValueProblem(f"{name}: unit code {unit} where {expected} was expected")
        number = float(Decimal(value).scaleb(scaler or 0))
        problem = range_problem(kind, number, max_power)
        if problem:
            raise ValueProblem(f"{name}: {number:g} {problem}")
        values[key] = number
    return SmlValues(values, meter_id)


def read_sml(data: bytes, max_power: float = DEFAULT_MAX_POWER) -> SmlValues:
    """The newest complete frame in ``data`` → its values (SmlError, ValueProblem)."""
    found = frames(data)
    if not found:
        raise SmlError("no complete SML frame")
    return values_of(entries_of(found[-1]), max_power)


# -- a byte stream (an infrared head on a serial port or a TCP bridge) -------------------------


@dataclass(frozen=True)
class Rejected:
    """A frame that was found but not served, and why."""

    reason: str  # "noise" (damaged or undecodable) or "values" (a refused value, no power)
    detail: str


class SmlStream:
    """Bytes in any chunks → one :class:`SmlValues` or :class:`Rejected` per complete frame. Pure.

    Bytes before a frame's start sequence are skipped (and counted in
    ``discarded``); a frame that never ends is dropped once the buffer holds
    more than :data:`STREAM_LIMIT` bytes, so garbage cannot grow it without bound.
    """

    def __init__(self, max_power: float = DEFAULT_MAX_POWER) -> None:
        from smllib.reader import SmlStreamReader

        self.max_power = max_power
        self.reader = SmlStreamReader()
        self.discarded = 0
        self.counts = {"frames": 0, "noise": 0, "refused": 0}

    def reset(self) -> None:
        self.discarded += len(self.reader.bytes)
        self.reader.clear()

    def feed(self, data: bytes) -> list[SmlValues | Rejected]:
        from smllib.errors import SmlLibException

        out: list[SmlValues | Rejected] = []
        self.reader.add(data)
        while True:
            before = len(self.reader.bytes)
            try:
                frame = self.reader.get_frame()
            except SmlLibException as exc:  # a CRC error: that frame is gone from the buffer
                self.counts["noise"] += 1
                out.append(Rejected("noise", f"damaged SML frame ({type(exc).__name__})"))
                continue
            if frame is None:
                self.discarded += before - len(self.reader.bytes)
                if len(self.reader.bytes) > STREAM_LIMIT:
                    self.reset()
                    self.counts["noise"] += 1
                    out.append(Rejected("noise", f"no frame end within {STREAM_LIMIT} bytes"))
                return out
            try:
                values = values_of(entries_of(frame), self.max_power)
            except SmlError as exc:
                self.counts["noise"] += 1
                out.append(Rejected("noise", str(exc)))
                continue
            except ValueProblem as exc:
                self.counts["refused"] += 1
                out.append(Rejected("values", str(exc)))
                continue
            if not values.has_power():
                self.counts["refused"] += 1
                out.append(Rejected("values", NO_POWER))
                continue
            self.counts["frames"] += 1
            out.append(values)
