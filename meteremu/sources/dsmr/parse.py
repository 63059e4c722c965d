"""DSMR / P1 telegrams, the pure part: framing, CRC, spec detection, → Reading.

No reactor and no sockets: :class:`P1Decoder` takes bytes as they arrive and
returns what became of each telegram; the I/O layer (``source.py``) only moves
bytes and acts on the results.

Pipeline for every chunk of bytes::

    TelegramFramer ──> "/…!CRC\\r\\n" ──> CRC check ──> spec (pinned or detected)
        ──> dsmr_parser.TelegramParser.parse ──> telegram_values() ──> Reading

* **Framing** follows dsmr_parser's ``TelegramBuffer``: ``/`` … ``!`` + 0-4 hex
  digits + optional NUL + CRLF, never crossing another ``/``; bytes before a
  telegram (junk after a Q3D ``!``, half a telegram after a reconnect) are
  dropped and counted. The buffer is bounded.
* **CRC** (CRC-16/ARC over ``/``…``!``) is checked here, on the bytes, whenever
  the telegram carries one, whatever the spec says (the Irish Iskra telegram
  has one although its spec does not); 1-3 digit CRCs are left-padded. A
  mismatch drops the telegram. A pinned CRC-carrying version (4, 5, 5B, …)
  also rejects a telegram without CRC; ``version: auto`` accepts one, as
  DSMR 2.2/3 and Q3D meters send none.
* **Spec detection** (``version: auto``): every dsmr_parser specification is
  scored by how many lines of the telegram its OBIS patterns recognise; the
  best wins, ties go to the more common spec (V5 first), and a
  ``1-3:0.2.8(4x/5x)`` header adds a point to V4/V5. The choice is cached per
  *shape* of the telegram (identification line, the OBIS code of every line and
  the 0.2.8 version): the scores depend on nothing else, so it costs one
  scoring per meter, and a damaged telegram (a CRC-less DSMR 3 one on a noisy
  line) has another shape and cannot change the spec of the good ones.

Mapping (design.md §4; see ``docs/sources-p1.md``):

* per phase ``act_power = (21.7.0 − 22.7.0)`` etc., kW → W exactly (Decimal);
  voltage 32/52/72.7.0 (230 V when absent), current 31/51/71.7.0 when it is
  consistent with the power (``V×I ≥ |P|``), else derived as ``|P|/V`` with pf 1
  (P1 currents are often whole amperes: 0 A at 170 W);
* a telegram without per-phase power (DSMR 2.2/3, E.ON HU) puts
  ``1.7.0 − 2.7.0`` on phase A; B and C carry only their measured voltage;
* lifetime counters: import = ``1.8.0`` if sent, else ``1.8.1 + 1.8.2 (+ …)``;
  export likewise from ``2.8.x``; they go on **phase A** only (the P1 total is
  not per phase), so the Meter's per-phase energy is (total, 0, 0);
* M-Bus channels (gas, water, heat…) and the other useful values are extras.
"""

from __future__ import annotations

import bisect
import copy
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from meteremu.reading import PhaseReading, Reading
from meteremu.sources.stamps import MonotonicStamps

# dsmr_parser logs every line it cannot parse at ERROR level with a traceback
# (the Belgian max-demand history with an invalid date, for instance), once per
# telegram: keep that out of the process's stderr. Our own counters and log
# lines report dropped telegrams.
_dsmr_log = logging.getLogger("dsmr_parser")
_dsmr_log.propagate = False
if not _dsmr_log.handlers:
    _dsmr_log.addHandler(logging.NullHandler())

from dsmr_parser import telegram_specifications as _specs  # noqa: E402
from dsmr_parser.objects import Telegram  # noqa: E402
from dsmr_parser.parsers import TelegramParser  # noqa: E402

NOMINAL_VOLTAGE = 230.0
NOMINAL_FREQUENCY = 50.0
MAX_BUFFER = 64 * 1024
# Beyond these a value is a damaged line, not a measurement: the field counts as
# absent (and can never overflow to inf when scaled or converted to float).
MAX_POWER_W = Decimal(10**9)
MAX_VOLTAGE_V = Decimal(10**5)
MAX_CURRENT_A = Decimal(10**5)
MAX_FREQUENCY_HZ = Decimal(1000)
MAX_ENERGY_WH = Decimal(10**15)
MAX_COUNT = Decimal(10**15)
MIN_VOLTAGE_V = 1.0  # below this there is no usable voltage (nominal 230 V instead)


# -- line settings ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineSettings:
    baudrate: int
    bytesize: int
    parity: str  # "N", "E", "O"
    stopbits: int

    def __str__(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


_LINE = re.compile(r"^\s*(\d+)\s*[ ,/]?\s*([5-8])([NEOneo])([12])\s*$")


def parse_line(text: str) -> LineSettings:
    """``"115200 8N1"``, ``"9600 7E1"`` → :class:`LineSettings`; ValueError if not."""
    match = _LINE.match(text)
    if not match:
        raise ValueError(text)
    return LineSettings(int(match.group(1)), int(match.group(2)), match.group(3).upper(),
                        int(match.group(4)))


LINE_V2 = LineSettings(9600, 7, "E", 1)
LINE_V4 = LineSettings(115200, 7, "E", 1)
LINE_V5 = LineSettings(115200, 8, "N", 1)
SERIAL_PROBE_ORDER = (LINE_V5, LINE_V4, LINE_V2)
"""``version: auto`` on a serial port tries these in turn (DSMR 5, 4, 2.2/3)."""


# -- specifications ----------------------------------------------------------------------


def _plaintext(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec for plaintext telegrams (the Austrian spec otherwise expects a DLMS frame)."""
    plain = copy.copy(spec)
    plain.pop("general_global_cipher", None)
    return plain


@dataclass(frozen=True)
class SpecInfo:
    """One dsmr_parser telegram specification, as the ``version`` option names it."""

    name: str
    spec: dict[str, Any] = field(repr=False)
    line: LineSettings
    parser: TelegramParser = field(repr=False, compare=False)

    @property
    def checksum(self) -> bool:
        return bool(self.spec.get("checksum_support"))


def _info(name: str, spec: dict[str, Any], line: LineSettings) -> SpecInfo:
    plain = _plaintext(spec)
    return SpecInfo(name, plain, line, TelegramParser(plain, apply_checksum_validation=False))


# The version names are dsmr_parser's own (clients/protocol.py), plus "3".
VERSIONS: dict[str, SpecInfo] = {
    "2.2": _info("2.2", _specs.V2_2, LINE_V2),
    "3": _info("3", _specs.V3, LINE_V2),
    "4": _info("4", _specs.V4, LINE_V4),
    "4+": _info("4+", _specs.V5, LINE_V4),
    "5": _info("5", _specs.V5, LINE_V5),
    "5B": _info("5B", _specs.BELGIUM_FLUVIUS, LINE_V5),
    "5L": _info("5L", _specs.LUXEMBOURG_SMARTY, LINE_V5),
    "5S": _info("5S", _specs.SWEDEN, LINE_V5),
    "Q3D": _info("Q3D", _specs.Q3D, LINE_V5),
    "ISKRA_IE": _info("ISKRA_IE", _specs.ISKRA_IE, LINE_V5),
    "5EONHU": _info("5EONHU", _specs.EON_HUNGARY, LINE_V5),
    "SAGEMCOM_T210_D_R": _info("SAGEMCOM_T210_D_R", _specs.SAGEMCOM_T210_D_R, LINE_V5),
    "MSn": _info("MSn", _specs.MSN, LINE_V5),
}
MSN_AUTHENTICATION_KEY = bytes.fromhex(_specs.MSN["authentication_key"])
"""The fixed, public authentication key of Luxembourg's Smarty meters (spec 3.2.5)."""

# Detection candidates, most common first (ties go to the earlier one).
_DETECT_ORDER = ("5", "4", "2.2", "5B", "5L", "5S", "5EONHU", "ISKRA_IE", "Q3D", "SAGEMCOM_T210_D_R")
_VERSION_HEADER = re.compile(r"^1-3:0\.2\.8\((\d)\d\)", re.MULTILINE)
_VERSION_HEADER_BYTES = re.compile(rb"^1-3:0\.2\.8\((\d)\d\)", re.MULTILINE)

_compiled: dict[str, list[re.Pattern[str]]] = {}


def _patterns(name: str) -> list[re.Pattern[str]]:
    if name not in _compiled:
        _compiled[name] = [re.compile(o["obis_reference"], re.DOTALL | re.MULTILINE)
                           for o in VERSIONS[name].spec["objects"]]
    return _compiled[name]


def score(text: str, name: str) -> int:
    """How many lines of ``text`` the spec ``name`` recognises."""
    starts = [m.start() for m in re.finditer(r"^", text, re.MULTILINE)]
    lines: set[int] = set()
    for pattern in _patterns(name):
        for match in pattern.finditer(text):
            lines.add(bisect.bisect_right(starts, match.start()))
    return len(lines)


def detect_spec(text: str) -> SpecInfo:
    """The dsmr_parser specification that recognises most of the telegram."""
    header = _VERSION_HEADER.search(text)
    bonus = {"4": 1} if header and header.group(1) == "4" else {"5": 1} if header else {}
    best = max(_DETECT_ORDER, key=lambda n: (score(text, n) + bonus.get(n, 0), -_DETECT_ORDER.index(n)))
    return VERSIONS[best]


# -- CRC and framing -----------------------------------------------------------------


def _arc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_ARC = _arc_table()


def crc16(data: bytes) -> int:
    """CRC-16/ARC (reflected poly 0xA001, init 0, no final xor), as DSMR uses it."""
    crc = 0
    for byte in data:
        crc = (crc >> 8) ^ _ARC[(crc ^ byte) & 0xFF]
    return crc


_FRAME = re.compile(rb"/[^/]+?![0-9A-F]{0,4}\x00?\r\n", re.DOTALL)
_TAIL = re.compile(rb"!([0-9A-F]{0,4})\x00?\r\n$")


def split_crc(telegram: bytes) -> tuple[bytes, int | None]:
    """``(bytes from / through !, transmitted CRC or None)`` of a framed telegram."""
    match = _TAIL.search(telegram)
    if match is None:
        raise ValueError("not a framed telegram")
    body = telegram[: match.start() + 1]
    digits = match.group(1)
    return body, int(digits, 16) if digits else None


def with_crc(body: bytes) -> bytes:
    """``/`` … ``!`` → the complete telegram with its CRC and CRLF (for tests, replays)."""
    if not body.endswith(b"!"):
        raise ValueError("the body must end with '!'")
    return body + f"{crc16(body):04X}".encode() + b"\r\n"


GENERAL_GLOBAL_CIPHER = 0xDB


class CipherFramer:
    """Cut DLMS general-global-cipher frames (encrypted telegrams) out of a stream.

    ``DB`` + system-title length + system title + A-XDR length (short form,
    ``81 nn`` or ``82 nn nn``) + content; anything before a ``DB`` is dropped.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.discarded = 0

    def reset(self) -> None:
        self.discarded += len(self._buffer)
        self._buffer.clear()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buffer
        buf += data
        out: list[bytes] = []
        while True:
            start = buf.find(GENERAL_GLOBAL_CIPHER)
            if start < 0:
                self.discarded += len(buf)
                buf.clear()
                break
            if start:
                self.discarded += start
                del buf[:start]
            if len(buf) < 3:
                break
            at = 2 + buf[1]  # the length field
            if len(buf) <= at:
                break
            first = buf[at]
            size = {0x81: 1, 0x82: 2}.get(first, 0 if first < 0x80 else -1)
            if size < 0 or buf[1] != 8:  # not a frame after all: resynchronise
                self.discarded += 1
                del buf[:1]
                continue
            if len(buf) < at + 1 + size:
                break
            length = int.from_bytes(buf[at + 1:at + 1 + size], "big") if size else first
            end = at + 1 + size + length
            if len(buf) < end:
                break
            out.append(bytes(buf[:end]))
            del buf[:end]
        return out


def decrypt_frame(frame: bytes, key: bytes, authentication_key: bytes | None) -> bytes:
    """A general-global-cipher frame → the plaintext telegram (ValueError if it does not decrypt).

    With an authentication key the GCM tag is verified (dlms_cosem); without
    one the content is decrypted without it (AES-CTR from counter 2, as
    dsmr_parser and ESPHome do for meters whose key is unknown), and the
    telegram's own CRC guards its integrity.
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from dlms_cosem.exceptions import DecryptionError
    from dlms_cosem.protocol.xdlms import GeneralGlobalCipher

    try:
        apdu = GeneralGlobalCipher.from_bytes(frame)
    except Exception as exc:
        raise ValueError(f"not a DLMS general-global-cipher frame ({type(exc).__name__})") from None
    if len(apdu.system_title) != 8 or len(apdu.ciphered_text) < 12:
        raise ValueError("malformed DLMS frame")
    if authentication_key is not None:
        try:
            return bytes(apdu.to_plain_apdu(key, authentication_key))
        except DecryptionError:
            raise ValueError("the frame does not decrypt with these keys (wrong encryption or "
                             "authentication key?)") from None
    counter = apdu.system_title + apdu.invocation_counter.to_bytes(4, "big") + (2).to_bytes(4, "big")
    decryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).decryptor()
    plain = decryptor.update(apdu.ciphered_text[:-12]) + decryptor.finalize()
    if not plain.startswith(b"/"):
        raise ValueError("the frame does not decrypt to a telegram (wrong encryption key?)")
    return plain


class TelegramFramer:
    """Cut complete telegrams out of a byte stream (see the module docstring)."""

    def __init__(self, limit: int = MAX_BUFFER) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self.discarded = 0  # bytes that were not part of any telegram

    def reset(self) -> None:
        self.discarded += len(self._buffer)
        self._buffer.clear()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        while True:
            match = _FRAME.search(self._buffer)
            if match is None:
                break
            self.discarded += match.start()
            out.append(bytes(match.group(0)))
            del self._buffer[: match.end()]
        # Whatever is left can only be the start of a telegram from its last "/".
        last = self._buffer.rfind(b"/")
        if last < 0:
            self.discarded += len(self._buffer)
            self._buffer.clear()
        elif last > 0:
            self.discarded += last
            del self._buffer[:last]
        if len(self._buffer) > self.limit:
            self.reset()
        return out


# -- values ------------------------------------------------------------------------------

_POWER_W = {"kW": Decimal(1000), "W": Decimal(1), None: Decimal(1000)}
_ENERGY_WH = {"kWh": Decimal(1000), "Wh": Decimal(1), "MWh": Decimal(10**6), None: Decimal(1000)}
_REACTIVE_VAR = {"kvar": Decimal(1000), "var": Decimal(1), None: Decimal(1000)}
_HEAT_KWH = {"GJ": Decimal(1000) / Decimal("3.6"), "MJ": Decimal(1) / Decimal("3.6"),
             "kWh": Decimal(1), "MWh": Decimal(1000), "Wh": Decimal("0.001")}

MBUS_KINDS = {2: "electricity", 3: "gas", 4: "heat", 6: "warm_water", 7: "water", 12: "heat"}


def _obj(telegram: Any, name: str) -> Any:
    return getattr(telegram, name, None)


def _decimal(obj: Any) -> Decimal | None:
    value = getattr(obj, "value", None)
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str):
        try:
            number = Decimal(value)
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def _scaled(telegram: Any, name: str, table: dict[Any, Decimal]) -> Decimal | None:
    obj = _obj(telegram, name)
    value = _decimal(obj)
    if value is None:
        return None
    factor = table.get(getattr(obj, "unit", None))
    return None if factor is None else value * factor


def _plain(telegram: Any, name: str, units: Iterable[str | None] = (None,)) -> Decimal | None:
    obj = _obj(telegram, name)
    value = _decimal(obj)
    if value is None or getattr(obj, "unit", None) not in units:
        return None
    return value


def _bounded(value: Decimal | None, limit: Decimal) -> Decimal | None:
    """``value`` if it is a plausible measurement (within ``±limit``), else None."""
    return None if value is None or abs(value) > limit else value


def phase_reading(p: float, voltage: float | None, current: float | None, freq: float) -> PhaseReading:
    """A consistent PhaseReading from P1 values (see the module docstring)."""
    v = voltage if voltage is not None and voltage >= MIN_VOLTAGE_V else NOMINAL_VOLTAGE
    if current is not None and current > 0 and v * current >= abs(p):
        s = v * current
        return PhaseReading(voltage=v, current=current, act_power=p, aprt_power=s, pf=p / s, freq=freq)
    return PhaseReading.from_power(p, voltage=v, pf=1.0, freq=freq)


@dataclass(frozen=True)
class MBusValue:
    channel: int
    kind: str
    key: str
    value: float  # in the key's unit
    raw: str  # value and unit as sent
    device_type: int | None
    equipment_id: str | None
    at: float | None  # epoch seconds of the M-Bus reading, when known


@dataclass(frozen=True)
class TelegramValues:
    """What one telegram says, in the project's units."""

    phases: tuple[PhaseReading, ...]
    energy: tuple[tuple[float, float], ...] | None
    extras: dict[str, float]
    meter_time: float | None
    mbus: tuple[MBusValue, ...] = ()
    equipment_id: str | None = None
    p1_version: str | None = None
    per_phase_power: bool = True

    @property
    def empty(self) -> bool:
        return not self.phases and self.energy is None and not self.extras


def _epoch(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def _device_type(device: Any) -> int | None:
    for name in ("MBUS_DEVICE_TYPE", "DEVICE_TYPE"):
        raw = getattr(getattr(device, name, None), "value", None)
        if raw is None:
            continue
        try:
            return int(str(raw).strip())
        except ValueError:
            return None
    return None


def _mbus(telegram: Any) -> tuple[MBusValue, ...]:
    out: list[MBusValue] = []
    used: set[str] = set()
    devices = sorted(getattr(telegram, "MBUS_DEVICES", None) or [], key=lambda d: d.channel_id)
    for device in devices:
        reading = None
        for name in ("MBUS_METER_READING", "HOURLY_GAS_METER_READING", "GAS_METER_READING"):
            reading = getattr(device, name, None)
            if reading is not None:
                break
        if reading is None:
            continue
        try:
            value, unit = reading.value, reading.unit
        except (IndexError, KeyError, TypeError):
            continue
        if not isinstance(value, Decimal) or not value.is_finite() or not unit:
            continue  # e.g. "(700101010000W)(00000000)": an empty channel, not 0 m³
        dtype = _device_type(device)
        kind = MBUS_KINDS.get(dtype) if dtype is not None else ("gas" if unit == "m3" else None)
        kind = kind or "mbus"
        slug = "".join(ch if ch.isalnum() else "_" for ch in str(unit)).lower()
        number: Decimal = value
        if kind == "heat":
            factor = _HEAT_KWH.get(unit)
            key = "heat_energy_kwh" if factor is not None else f"heat_{slug}"
            number = value * factor if factor is not None else value
        elif kind == "electricity":
            factor = _ENERGY_WH.get(unit)
            key = "electricity_kwh" if factor is not None else f"electricity_{slug}"
            number = value * factor / 1000 if factor is not None else value
        else:
            key = f"{kind}_{slug}"
        channel = int(device.channel_id)
        if key in used:
            key = f"{key}.{channel}"
        used.add(key)
        ident = None
        for name in ("MBUS_EQUIPMENT_IDENTIFIER", "EQUIPMENT_IDENTIFIER_GAS"):
            raw_id = getattr(getattr(device, name, None), "value", None)
            if isinstance(raw_id, str) and raw_id:
                ident = raw_id
                break
        at = None
        try:
            at = _epoch(reading.datetime)
        except (IndexError, KeyError, TypeError):
            pass
        if not math.isfinite(float(number)):
            continue  # beyond float range: a damaged line, not a reading
        out.append(MBusValue(channel=channel, kind=kind, key=key, value=float(number),
                             raw=f"{value} {unit}", device_type=dtype, equipment_id=ident, at=at))
    return tuple(out)


def telegram_values(telegram: Telegram) -> TelegramValues:
    """Map a parsed telegram to phases, lifetime counters and extras."""
    t = telegram
    freq_value = _bounded(_plain(t, "FREQUENCY", ("Hz", None)), MAX_FREQUENCY_HZ)
    freq = float(freq_value) if freq_value is not None else NOMINAL_FREQUENCY
    volts = [_bounded(_plain(t, f"INSTANTANEOUS_VOLTAGE_L{n}", ("V", None)), MAX_VOLTAGE_V) for n in (1, 2, 3)]
    amps = [_bounded(_plain(t, f"INSTANTANEOUS_CURRENT_L{n}", ("A", None)), MAX_CURRENT_A)
            for n in (1, 2, 3)]
    imports = [_bounded(_scaled(t, f"INSTANTANEOUS_ACTIVE_POWER_L{n}_POSITIVE", _POWER_W), MAX_POWER_W)
               for n in (1, 2, 3)]
    exports = [_bounded(_scaled(t, f"INSTANTANEOUS_ACTIVE_POWER_L{n}_NEGATIVE", _POWER_W), MAX_POWER_W)
               for n in (1, 2, 3)]
    total_import = _bounded(_scaled(t, "CURRENT_ELECTRICITY_USAGE", _POWER_W), MAX_POWER_W)
    total_export = _bounded(_scaled(t, "CURRENT_ELECTRICITY_DELIVERY", _POWER_W), MAX_POWER_W)

    phases: list[PhaseReading] = []
    per_phase = any(v is not None for v in (*imports, *exports))
    if per_phase:
        count = max(n + 1 for n in range(3)
                    if imports[n] is not None or exports[n] is not None or volts[n] is not None)
        for n in range(count):
            p = float((imports[n] or Decimal(0)) - (exports[n] or Decimal(0)))
            phases.append(phase_reading(p, _float(volts[n]), _float(amps[n]), freq))
    elif total_import is not None or total_export is not None:
        p = float((total_import or Decimal(0)) - (total_export or Decimal(0)))
        phases.append(phase_reading(p, _float(volts[0]), None, freq))
        for volt in volts[1:]:
            if volt is not None and volt >= MIN_VOLTAGE_V:
                phases.append(PhaseReading(float(volt), 0.0, 0.0, 0.0, 0.0, freq))

    imp = _bounded(_scaled(t, "ELECTRICITY_IMPORTED_TOTAL", _ENERGY_WH), MAX_ENERGY_WH)
    tariffs_in = [_bounded(_scaled(t, f"ELECTRICITY_USED_TARIFF_{n}", _ENERGY_WH), MAX_ENERGY_WH)
                  for n in (1, 2, 3, 4)]
    if imp is None and any(v is not None for v in tariffs_in):
        imp = sum((v for v in tariffs_in if v is not None), Decimal(0))
    exp = _bounded(_scaled(t, "ELECTRICITY_EXPORTED_TOTAL", _ENERGY_WH), MAX_ENERGY_WH)
    tariffs_out = [_bounded(_scaled(t, f"ELECTRICITY_DELIVERED_TARIFF_{n}", _ENERGY_WH), MAX_ENERGY_WH)
                   for n in (1, 2, 3, 4)]
    if exp is None and any(v is not None for v in tariffs_out):
        exp = sum((v for v in tariffs_out if v is not None), Decimal(0))
    energy = None
    if imp is not None or exp is not None:
        energy = ((float(imp or 0), float(exp or 0)),)

    extras: dict[str, float] = {}
    if total_import is not None:
        extras["power_import_w"] = float(total_import)
    if total_export is not None:
        extras["power_export_w"] = float(total_export)
    for n, value in enumerate(tariffs_in, 1):
        if value is not None:
            extras[f"energy_import_t{n}_kwh"] = float(value / 1000)
    for n, value in enumerate(tariffs_out, 1):
        if value is not None:
            extras[f"energy_export_t{n}_kwh"] = float(value / 1000)
    tariff = getattr(_obj(t, "ELECTRICITY_ACTIVE_TARIFF"), "value", None)
    if tariff is not None:
        try:
            extras["tariff"] = float(int(str(tariff).strip()))
        except (ValueError, OverflowError):
            pass
    for name, key in (("BELGIUM_CURRENT_AVERAGE_DEMAND", "average_demand_w"),
                      ("BELGIUM_MAXIMUM_DEMAND_MONTH", "month_peak_w")):
        value = _bounded(_scaled(t, name, _POWER_W), MAX_POWER_W)
        if value is not None:
            extras[key] = float(value)
    for name, key in (("CURRENT_REACTIVE_IMPORTED", "reactive_import_var"),
                      ("CURRENT_REACTIVE_EXPORTED", "reactive_export_var")):
        value = _bounded(_scaled(t, name, _REACTIVE_VAR), MAX_POWER_W)
        if value is not None:
            extras[key] = float(value)
    for name, key in (("SHORT_POWER_FAILURE_COUNT", "power_failures"),
                      ("LONG_POWER_FAILURE_COUNT", "long_power_failures")):
        value = _bounded(_decimal(_obj(t, name)), MAX_COUNT)
        if value is not None:
            extras[key] = float(value)
    mbus = _mbus(t)
    for item in mbus:
        extras[item.key] = item.value

    ident = None
    for name in ("EQUIPMENT_IDENTIFIER", "BELGIUM_EQUIPMENT_IDENTIFIER", "LUXEMBOURG_EQUIPMENT_IDENTIFIER",
                 "Q3D_EQUIPMENT_IDENTIFIER", "COSEM_LOGICAL_DEVICE_NAME"):
        value = getattr(_obj(t, name), "value", None)
        if isinstance(value, str) and value:
            ident = value
            break
    header = getattr(_obj(t, "P1_MESSAGE_HEADER"), "value", None)
    return TelegramValues(
        phases=tuple(phases), energy=energy, extras=extras,
        meter_time=_epoch(getattr(_obj(t, "P1_MESSAGE_TIMESTAMP"), "value", None)),
        mbus=mbus, equipment_id=ident, p1_version=header if isinstance(header, str) else None,
        per_phase_power=per_phase,
    )


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def parse_telegram(telegram: bytes, spec: SpecInfo) -> Telegram:
    """dsmr_parser's parse of a framed telegram (CRC already checked here)."""
    return spec.parser.parse(telegram.decode("latin-1"))


# -- the decoder -----------------------------------------------------------------------------

_LINE_START = re.compile(rb"^([^(\r\n]*\(?)", re.MULTILINE)


def telegram_shape(telegram: bytes) -> tuple[bytes, ...]:
    """What spec detection depends on: every line up to its first ``(`` (the
    identification line whole) and the ``1-3:0.2.8`` version digit."""
    body = telegram[: telegram.rfind(b"!") + 1]  # not the CRC: it changes with every value
    header = _VERSION_HEADER_BYTES.search(body)
    return (header.group(1) if header else b"", *_LINE_START.findall(body))


@dataclass(frozen=True)
class Accepted:
    reading: Reading
    values: TelegramValues
    spec: str
    crc: bool  # the telegram carried a CRC (and it matched)


@dataclass(frozen=True)
class Rejected:
    reason: str  # "crc", "no_crc", "parse", "empty", "decrypt"
    detail: str


Result = Accepted | Rejected


class P1Decoder:
    """Bytes in, :class:`Accepted` / :class:`Rejected` out; counts what it drops.

    ``version`` is ``"auto"`` or a key of :data:`VERSIONS`. ``timestamps``:
    ``"meter"`` uses the telegram's ``0-0:1.0.0`` as ``measured_at`` (arrival
    time when the telegram has none: DSMR 2.2/3, Q3D); ``"arrival"`` always
    uses the arrival time (replays of old captures).
    """

    def __init__(self, version: str = "auto", check_crc: bool = True, timestamps: str = "meter",
                 encryption_key: bytes | None = None, authentication_key: bytes | None = None) -> None:
        if version != "auto" and version not in VERSIONS:
            raise ValueError(f"unknown DSMR version {version!r}")
        self.version = version
        self.check_crc = check_crc
        self.timestamps = timestamps
        self.encryption_key = encryption_key
        if authentication_key is None and version == "MSn":
            authentication_key = MSN_AUTHENTICATION_KEY
        self.authentication_key = authentication_key
        self.framer: TelegramFramer | CipherFramer = (
            CipherFramer() if encryption_key is not None else TelegramFramer())
        self.counts = {"telegrams": 0, "crc_errors": 0, "parse_errors": 0, "decrypt_errors": 0}
        self.last_spec: str | None = None
        self._detected: dict[tuple[bytes, ...], SpecInfo] = {}
        self._stamps = MonotonicStamps()  # the meter's clock (0-0:1.0.0), made monotonic

    def reset(self) -> None:
        """Forget a half-received telegram (after a reconnect)."""
        self.framer.reset()

    def feed(self, data: bytes, arrival: float) -> list[Result]:
        if self.encryption_key is None:
            return [self.decode(t, arrival) for t in self.framer.feed(data)]
        results: list[Result] = []
        for frame in self.framer.feed(data):
            try:
                plain = decrypt_frame(frame, self.encryption_key, self.authentication_key)
            except ValueError as exc:
                self.counts["decrypt_errors"] += 1
                results.append(Rejected("decrypt", str(exc)))
                continue
            telegrams = TelegramFramer().feed(plain if plain.endswith(b"\r\n") else plain + b"\r\n")
            if len(telegrams) != 1:
                self.counts["parse_errors"] += 1
                results.append(Rejected("parse", "the decrypted frame is not one telegram"))
                continue
            results.append(self.decode(telegrams[0], arrival))
        return results

    def spec_for(self, telegram: bytes) -> SpecInfo:
        if self.version != "auto":
            return VERSIONS[self.version]
        key = telegram_shape(telegram)
        spec = self._detected.get(key)
        if spec is None:
            if len(self._detected) > 16:
                self._detected.clear()
            spec = self._detected[key] = detect_spec(telegram.decode("latin-1"))
        return spec

    def decode(self, telegram: bytes, arrival: float) -> Result:
        body, transmitted = split_crc(telegram)
        if transmitted is not None and self.check_crc:
            computed = crc16(body)
            if computed != transmitted:
                self.counts["crc_errors"] += 1
                return Rejected("crc", f"CRC mismatch: telegram says {transmitted:04X}, computed {computed:04X}")
        spec = self.spec_for(telegram)
        if transmitted is None and self.check_crc and self.version != "auto" and spec.checksum:
            self.counts["crc_errors"] += 1
            return Rejected("no_crc", f"DSMR {spec.name} telegram without CRC")
        try:
            values = telegram_values(parse_telegram(telegram, spec))
        except Exception as exc:  # dsmr_parser raises ParseError, ValueError, …
            self.counts["parse_errors"] += 1
            return Rejected("parse", f"{type(exc).__name__}: {str(exc)[:120]}")
        if values.empty:
            self.counts["parse_errors"] += 1
            return Rejected("empty", f"no power, energy or M-Bus value in the telegram (spec {spec.name})")
        stamp = values.meter_time if self.timestamps == "meter" and values.meter_time is not None else arrival
        measured = self._stamps.publish(stamp)
        self.counts["telegrams"] += 1
        self.last_spec = spec.name
        reading = Reading(phases=values.phases, measured_at=measured, energy=values.energy,
                          extras=values.extras)
        return Accepted(reading, values, spec.name, transmitted is not None)
