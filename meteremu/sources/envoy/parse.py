"""Pure parsers for the Enphase Envoy / IQ Gateway local API (specs/envoy.md §2, §4).

No reactor, no sockets: every function takes decoded JSON (or the raw bytes of
``/info``) and returns frozen values, so the tests replay real captures
synchronously. The I/O lives in :mod:`meteremu.sources.envoy.client`.

Conventions (spec §4.1, §4.5):

* grid power is signed, ``+`` = import from the grid, ``-`` = export — the
  Envoy's own convention, and meteremu's;
* entries are selected by ``type`` / ``measurementType`` (or by eid through
  ``/ivp/meters``), never by position;
* only the first ``phaseCount`` lines or channels are trusted (spec §7);
* aggregate voltages are sums and aggregate power factors can exceed 1, so
  per-phase values come from lines/channels only.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meteremu.reading import PhaseReading

NET = "net-consumption"
TOTAL = "total-consumption"
PRODUCTION = "production"
STORAGE = "storage"

INVERTER_DEV_TYPE = 1  # micro-inverter; devType 11 rows are AC batteries (spec §4.3)
WRAP_WH = 2**32 / 3600  # 1,193,046.47 Wh: the 7.x inverters whLifetime wrap (spec §7)


class EnvoyParseError(ValueError):
    """The answer is not what the endpoint should return (HTML, wrong shape)."""


class NoGridData(Exception):
    """The Envoy has no grid measurement: no consumption CT, or it is disabled.

    Not a transient problem: the source reports it and probes again later,
    and never serves zeros instead (design.md §4).
    """


class MissingSample(Exception):
    """This one sample has no usable grid value (``activeCount`` 0 for a moment)."""


# -- small helpers ------------------------------------------------------------------


def _num(value: Any, default: float = 0.0) -> float:
    """A finite float from an int/float/numeric string; ``default`` otherwise."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float | str):
        try:
            result = float(value)
        except (ValueError, OverflowError):  # garbage, or an int beyond float range
            return default
    else:
        return default
    return result if math.isfinite(result) else default


def _opt_num(value: Any) -> float | None:
    result = _num(value, math.nan)
    return None if math.isnan(result) else result


def _int(value: Any, default: int = 0) -> int:
    return int(_num(value, default))


def _object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """The JSON object at ``key``; an empty one if it is missing or not an object."""
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def guess_frequency(voltage: float) -> float:
    """Nominal grid frequency when an endpoint has none: 60 Hz on 120 V legs, else 50 Hz."""
    return 60.0 if 0 < voltage < 180 else 50.0


# Physical bounds of one phase (a household or small commercial grid
# connection): anything beyond is a corrupt answer, not a measurement.
MAX_POWER_W = 1e9
MIN_VOLTAGE = 1.0  # below this there is no usable voltage: treated as absent
MAX_VOLTAGE = 1e5
MAX_CURRENT_A = 1e6
MAX_APPARENT_VA = 1e10


def make_phase(
    act_power: float,
    voltage: float | None,
    current: float | None = None,
    apparent: float | None = None,
    pf: float | None = None,
    freq: float | None = None,
) -> PhaseReading:
    """One phase from whatever the endpoint measured.

    Current and apparent power are reported signed on 8.x (negative while
    exporting); a PhaseReading keeps them unsigned and lets the power factor
    follow the sign of the active power. Without a measured current or
    apparent power, both are derived from P, U and pf.

    Raises EnvoyParseError for a non-physical active power (|P| > 1 GW); a
    voltage outside 1 V..100 kV counts as absent (nominal 230 V), and a
    current or apparent power beyond physical bounds as not measured.
    """
    if not math.isfinite(act_power) or abs(act_power) > MAX_POWER_W:
        raise EnvoyParseError(f"non-physical active power {act_power!r} W")
    volts = voltage if voltage is not None and MIN_VOLTAGE <= voltage <= MAX_VOLTAGE else 230.0
    hz = freq if freq and freq > 0 else guess_frequency(volts)
    if current is not None and not (math.isfinite(current) and abs(current) <= MAX_CURRENT_A):
        current = None
    if apparent is not None and not (math.isfinite(apparent) and abs(apparent) <= MAX_APPARENT_VA):
        apparent = None
    if pf is not None and not math.isfinite(pf):
        pf = None
    if current is None or apparent is None:
        return PhaseReading.from_power(act_power, voltage=volts, pf=abs(pf) if pf else 1.0, freq=hz)
    pf_abs = min(1.0, abs(pf)) if pf is not None else 1.0
    signed_pf = math.copysign(pf_abs, act_power) if act_power else 0.0
    return PhaseReading(voltage=volts, current=abs(current), act_power=act_power,
                        aprt_power=abs(apparent), pf=signed_pf, freq=hz)


# -- /info (XML, no auth) -----------------------------------------------------------


@dataclass(frozen=True)
class EnvoyInfo:
    serial: str
    software: str  # as written, e.g. "D7.6.175"
    firmware: str  # without the letter, e.g. "7.6.175"
    version: tuple[int, ...]
    imeter: bool | None
    web_tokens: bool | None

    @property
    def uses_tokens(self) -> bool:
        """Firmware 7.0.0 and later need a JWT over HTTPS (spec §1)."""
        return self.version >= (7,)


_VERSION = re.compile(r"(\d+(?:\.\d+)*)")


def parse_version(software: str) -> tuple[str, tuple[int, ...]]:
    """``"D7.6.175"`` → ``("7.6.175", (7, 6, 175))``; the leading letter (D, R, M) is dropped."""
    text = software.strip()
    if text[:1].isalpha():
        text = text[1:]
    match = _VERSION.match(text)
    if match is None:
        raise EnvoyParseError(f"unreadable firmware version {software!r}")
    firmware = match.group(1)
    try:
        return firmware, tuple(int(p) for p in firmware.split("."))
    except ValueError:  # a part beyond Python's int-string digit limit
        raise EnvoyParseError(f"unreadable firmware version {software[:40]!r}…") from None


def _xml_bool(element: ET.Element | None) -> bool | None:
    if element is None or element.text is None:
        return None
    return element.text.strip().lower() == "true"


def parse_info(body: bytes | str) -> EnvoyInfo:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise EnvoyParseError(f"/info is not XML: {exc}") from None
    device = root.find("device")
    if device is None:
        raise EnvoyParseError("/info has no <device> element")
    serial = (device.findtext("sn") or "").strip()
    software = (device.findtext("software") or "").strip()
    if not serial or not software:
        raise EnvoyParseError("/info lacks <sn> or <software>")
    firmware, version = parse_version(software)
    return EnvoyInfo(serial=serial, software=software, firmware=firmware, version=version,
                     imeter=_xml_bool(device.find("imeter")),
                     web_tokens=_xml_bool(root.find("web-tokens")))


# -- /ivp/meters (CT configuration) ---------------------------------------------------


@dataclass(frozen=True)
class CTConfig:
    eid: int
    measurement_type: str
    state: str
    phase_mode: str | None
    phase_count: int
    metering_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self.state == "enabled"


def parse_meters(data: Any) -> tuple[CTConfig, ...]:
    """The CT list. ``[]`` (and old firmware's ``{"error": ...}``) mean "not metered"."""
    if isinstance(data, Mapping):
        return ()
    if not isinstance(data, list):
        raise EnvoyParseError("/ivp/meters is not a list")
    result = []
    for item in data:
        if not isinstance(item, Mapping) or "eid" not in item:
            continue
        result.append(CTConfig(
            eid=_int(item.get("eid")),
            measurement_type=str(item.get("measurementType") or ""),
            state=str(item.get("state") or ""),
            phase_mode=item.get("phaseMode"),
            phase_count=max(1, _int(item.get("phaseCount"), 1)),
            metering_status=item.get("meteringStatus"),
        ))
    return tuple(result)


def find_ct(meters: Iterable[CTConfig], measurement_type: str) -> CTConfig | None:
    for ct in meters:
        if ct.measurement_type == measurement_type:
            return ct
    return None


def grid_phase_count(meters: Sequence[CTConfig]) -> int | None:
    """Phases of the grid-side measurement: net CT, else total CT, else production CT."""
    for kind in (NET, TOTAL, PRODUCTION):
        ct = find_ct(meters, kind)
        if ct is not None:
            return ct.phase_count
    return None


# -- /ivp/meters/readings --------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    active_power: float
    apparent_power: float | None
    reactive_power: float | None
    pf: float | None
    voltage: float | None
    current: float | None
    freq: float | None
    energy_dlvd: float | None  # Wh "delivered to the switchboard" (net CT: import)
    energy_rcvd: float | None  # Wh "received from the switchboard" (net CT: export)

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> Channel:
        return cls(
            active_power=_num(item.get("activePower")),
            apparent_power=_opt_num(item.get("apparentPower")),
            reactive_power=_opt_num(item.get("reactivePower")),
            pf=_opt_num(item.get("pwrFactor")),
            voltage=_opt_num(item.get("voltage")),
            current=_opt_num(item.get("current")),
            freq=_opt_num(item.get("freq")),
            energy_dlvd=_opt_num(item.get("actEnergyDlvd")),
            energy_rcvd=_opt_num(item.get("actEnergyRcvd")),
        )


@dataclass(frozen=True)
class CTReading:
    eid: int
    measurement_type: str
    state: str
    timestamp: float | None
    total: Channel  # the aggregate values (voltage is a sum of phases; do not serve it)
    channels: tuple[Channel, ...]  # the first phaseCount channels only

    @property
    def enabled(self) -> bool:
        return self.state == "enabled"


def parse_readings(data: Any, meters: Sequence[CTConfig]) -> dict[str, CTReading]:
    """Readings keyed by measurement type, for the eids ``/ivp/meters`` lists.

    Unknown eids (8.3.x adds a zero-filled 1023410688) are ignored, and
    channels beyond the meter's ``phaseCount`` are dropped (8.2.4286 carries a
    junk third channel).
    """
    if isinstance(data, Mapping):
        raise EnvoyParseError("/ivp/meters/readings is not a list")
    if not isinstance(data, list):
        raise EnvoyParseError("/ivp/meters/readings is not a list")
    by_eid = {ct.eid: ct for ct in meters}
    result: dict[str, CTReading] = {}
    for item in data:
        if not isinstance(item, Mapping):
            continue
        ct = by_eid.get(_int(item.get("eid"), -1))
        if ct is None:
            continue
        raw_channels = item.get("channels")
        channels = tuple(Channel.from_json(ch) for ch in raw_channels[: ct.phase_count]
                         if isinstance(ch, Mapping)) if isinstance(raw_channels, list) else ()
        timestamp = _opt_num(item.get("timestamp"))
        result[ct.measurement_type] = CTReading(
            eid=ct.eid, measurement_type=ct.measurement_type, state=ct.state,
            timestamp=timestamp or None, total=Channel.from_json(item), channels=channels)
    return result


# -- what the meter gets ----------------------------------------------------------------


@dataclass(frozen=True)
class GridSample:
    """Per-phase grid flow from one endpoint, ``+`` = import."""

    phases: tuple[PhaseReading, ...]
    measured_at: float | None  # the Envoy's own timestamp of the sample
    energy: tuple[tuple[float, float], ...] | None  # per phase (import_wh, export_wh)
    origin: str  # "readings", "production" or "livedata"

    def powers(self) -> tuple[float, ...]:
        return tuple(p.act_power for p in self.phases)


def _channel_phase(ch: Channel) -> PhaseReading:
    return make_phase(ch.active_power, ch.voltage, ch.current, ch.apparent_power, ch.pf, ch.freq)


def grid_from_readings(readings: Mapping[str, CTReading]) -> GridSample:
    """Grid flow from the CT readings (spec §4.5, §4.6).

    A net-consumption CT ("load with solar") measures the grid directly and
    brings lifetime import/export counters per phase. With a total-consumption
    CT ("load only") and a production CT, the grid is load minus production
    per phase; there are no grid energy counters then (the Meter integrates).
    """
    net = readings.get(NET)
    if net is not None and net.enabled:
        channels = net.channels or (net.total,)
        phases = tuple(_channel_phase(ch) for ch in channels)
        energy: tuple[tuple[float, float], ...] | None = None
        if all(ch.energy_dlvd is not None and ch.energy_rcvd is not None for ch in channels):
            energy = tuple((ch.energy_dlvd or 0.0, ch.energy_rcvd or 0.0) for ch in channels)
        return GridSample(phases, net.timestamp, energy, "readings")
    total = readings.get(TOTAL)
    production = readings.get(PRODUCTION)
    if total is not None and total.enabled and production is not None and production.enabled:
        load = total.channels or (total.total,)
        pv = production.channels or (production.total,)
        flows: list[PhaseReading] = []
        for i, ch in enumerate(load):
            pv_w = pv[i].active_power if i < len(pv) else 0.0
            flows.append(make_phase(ch.active_power - pv_w, ch.voltage, pf=1.0, freq=ch.freq))
        return GridSample(tuple(flows), total.timestamp, None, "readings")
    if net is not None or total is not None:
        raise NoGridData("the consumption CT is disabled in /ivp/meters")
    raise NoGridData("no consumption CT in /ivp/meters")


# -- /production.json?details=1 ------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    w_now: float
    rms_voltage: float | None
    rms_current: float | None
    apparent: float | None
    reactive: float | None
    pf: float | None
    wh_lifetime: float | None

    @property
    def active(self) -> bool:
        """pyenphase's rule: a line counts when at least one of its values is non-zero."""
        return any(v for v in (self.w_now, self.rms_voltage, self.rms_current, self.apparent,
                               self.reactive, self.wh_lifetime))


@dataclass(frozen=True)
class EimEntry:
    measurement_type: str
    active_count: int
    reading_time: float | None
    w_now: float
    wh_lifetime: float
    lines: tuple[Line, ...]

    @property
    def active(self) -> bool:
        return self.active_count > 0


@dataclass(frozen=True)
class InvertersEntry:
    active_count: int
    reading_time: float | None
    w_now: float
    wh_lifetime: float


@dataclass(frozen=True)
class AcbEntry:
    active_count: int
    reading_time: float | None
    w_now: float
    wh_now: float
    state: str
    percent_full: float | None


@dataclass(frozen=True)
class ProductionReport:
    inverters: InvertersEntry | None
    production: EimEntry | None
    total: EimEntry | None
    net: EimEntry | None
    acb: AcbEntry | None

    def total_is_net_copy(self) -> bool:
        """The 8.3.5433 bug: the total-consumption entry repeats the net one (spec §4.1)."""
        total, net, prod = self.total, self.net, self.production
        return (total is not None and net is not None and prod is not None
                and total.active and net.active and prod.active
                and total.w_now == net.w_now and total.wh_lifetime == net.wh_lifetime)

    def corrected_total(self) -> tuple[float, float] | None:
        """House load ``(W, Wh lifetime)``, with the 8.3.5433 copy bug fixed.

        When the total-consumption entry equals the net-consumption one while a
        production CT is active, the load is net + production (pyenphase's fix).
        """
        total = self.total
        if total is None or not total.active:
            return None
        if self.total_is_net_copy():
            assert self.net is not None and self.production is not None
            return (self.net.w_now + self.production.w_now,
                    self.net.wh_lifetime + self.production.wh_lifetime)
        return total.w_now, total.wh_lifetime

    def corrected_total_lines(self) -> tuple[float, ...] | None:
        """Per-line house load with the same fix (``None`` without lines)."""
        total = self.total
        if total is None or not total.active or not total.lines:
            return None
        if self.total_is_net_copy():
            assert self.net is not None and self.production is not None
            net, prod = self.net.lines, self.production.lines
            return tuple(net[i].w_now + prod[i].w_now for i in range(min(len(net), len(prod))))
        return tuple(line.w_now for line in total.lines)


def _line(item: Mapping[str, Any]) -> Line:
    return Line(
        w_now=_num(item.get("wNow")),
        rms_voltage=_opt_num(item.get("rmsVoltage")),
        rms_current=_opt_num(item.get("rmsCurrent")),
        apparent=_opt_num(item.get("apprntPwr")),
        reactive=_opt_num(item.get("reactPwr")),
        pf=_opt_num(item.get("pwrFactor")),
        wh_lifetime=_opt_num(item.get("whLifetime")),
    )


def _eim(item: Mapping[str, Any]) -> EimEntry:
    lines = item.get("lines")
    return EimEntry(
        measurement_type=str(item.get("measurementType") or ""),
        active_count=_int(item.get("activeCount")),
        reading_time=_opt_num(item.get("readingTime")) or None,
        w_now=_num(item.get("wNow")),
        wh_lifetime=_num(item.get("whLifetime")),
        lines=tuple(_line(x) for x in lines if isinstance(x, Mapping)) if isinstance(lines, list) else (),
    )


def parse_production(data: Any) -> ProductionReport:
    """``/production.json`` (with or without ``details=1``); tolerant of missing parts.

    Firmware 3.x answers an HTML page here: the caller decodes JSON first, and
    anything that is not a JSON object is an :class:`EnvoyParseError`.
    """
    if not isinstance(data, Mapping) or not ("production" in data or "consumption" in data):
        raise EnvoyParseError("/production.json is not a production report")
    inverters = production = total = net = None
    acb = None
    for key in ("production", "consumption", "storage"):
        entries = data.get(key)
        if not isinstance(entries, list):
            continue
        for item in entries:
            if not isinstance(item, Mapping):
                continue
            kind = item.get("type")
            if kind == "inverters" and inverters is None:
                inverters = InvertersEntry(
                    active_count=_int(item.get("activeCount")),
                    reading_time=_opt_num(item.get("readingTime")) or None,
                    w_now=_num(item.get("wNow")), wh_lifetime=_num(item.get("whLifetime")))
            elif kind == "eim":
                entry = _eim(item)
                if entry.measurement_type == PRODUCTION and production is None:
                    production = entry
                elif entry.measurement_type == TOTAL and total is None:
                    total = entry
                elif entry.measurement_type == NET and net is None:
                    net = entry
            elif kind == "acb" and acb is None:
                acb = AcbEntry(
                    active_count=_int(item.get("activeCount")),
                    reading_time=_opt_num(item.get("readingTime")) or None,
                    w_now=_num(item.get("wNow")), wh_now=_num(item.get("whNow")),
                    state=str(item.get("state") or ""), percent_full=_opt_num(item.get("percentFull")))
    return ProductionReport(inverters, production, total, net, acb)


def usable_lines(lines: Sequence[Line], phase_count: int | None) -> tuple[Line, ...]:
    """The first ``phase_count`` lines; without it, drop trailing all-zero lines."""
    if phase_count is not None:
        return tuple(lines[:phase_count])
    kept = list(lines)
    while kept and not kept[-1].active:
        kept.pop()
    return tuple(kept)


def grid_from_production(report: ProductionReport, phase_count: int | None = None,
                         freq: float | None = None) -> GridSample:
    """Grid flow from the net-consumption entry's ``lines`` (spec §4.1).

    ``activeCount`` 0 on a present entry is a missing sample (it can drop to 0
    for a moment, spec §1.9). An entry without ``lines`` (firmware that sends
    none) gives the aggregate on phase A, as design.md §4 asks of total-only
    sources. No net-consumption entry at all means the Envoy is not metered.
    """
    net = report.net
    if net is None:
        raise NoGridData("no net-consumption entry in /production.json")
    if not net.active:
        raise MissingSample("net-consumption activeCount is 0")
    lines = usable_lines(net.lines, phase_count)
    if lines:
        phases = tuple(make_phase(line.w_now, line.rms_voltage, line.rms_current, line.apparent,
                                  line.pf, freq) for line in lines)
    else:
        phases = (make_phase(net.w_now, None, pf=1.0, freq=freq),)
    return GridSample(phases, net.reading_time, None, "production")


# -- /api/v1/production -------------------------------------------------------------------


@dataclass(frozen=True)
class ProductionSummary:
    watts_now: float
    wh_today: float
    wh_seven_days: float
    wh_lifetime: float

    @property
    def seven_days_plausible(self) -> bool:
        """7.3.517 reports roughly the lifetime as ``wattHoursSevenDays`` (spec §4.2)."""
        return self.wh_seven_days <= max(self.wh_today, 0.0) * 7 or self.wh_seven_days < self.wh_lifetime * 0.5


def parse_production_summary(data: Any) -> ProductionSummary:
    if not isinstance(data, Mapping) or "wattsNow" not in data:
        raise EnvoyParseError("/api/v1/production is not a production summary")
    return ProductionSummary(
        watts_now=_num(data.get("wattsNow")), wh_today=_num(data.get("wattHoursToday")),
        wh_seven_days=_num(data.get("wattHoursSevenDays")),
        wh_lifetime=_num(data.get("wattHoursLifetime")))


# -- /api/v1/production/inverters ----------------------------------------------------------


@dataclass(frozen=True)
class InverterReport:
    serial: str
    last_report_date: int
    watts: float
    max_watts: float | None
    dev_type: int


def parse_inverters(data: Any, include_all: bool = False) -> tuple[InverterReport, ...]:
    """Micro-inverters only (``devType`` 1; rows without devType, as on 3.x, count as 1).

    ``devType`` 11 rows are AC batteries and must not be summed as PV (spec §4.3).
    """
    if not isinstance(data, list):
        raise EnvoyParseError("/api/v1/production/inverters is not a list")
    result = []
    for item in data:
        if not isinstance(item, Mapping) or not item.get("serialNumber"):
            continue
        dev_type = _int(item.get("devType"), INVERTER_DEV_TYPE)
        if dev_type != INVERTER_DEV_TYPE and not include_all:
            continue
        result.append(InverterReport(
            serial=str(item["serialNumber"]), last_report_date=_int(item.get("lastReportDate")),
            watts=_num(item.get("lastReportWatts")), max_watts=_opt_num(item.get("maxReportWatts")),
            dev_type=dev_type))
    return tuple(result)


class InverterTracker:
    """Which inverters reported since the last poll (envoy-logger's rule, spec §6.1).

    An inverter is reported only when its ``lastReportDate`` moved. The first
    poll only learns the dates: nothing says how old those reports are.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] | None = None

    def update(self, reports: Iterable[InverterReport]) -> list[InverterReport]:
        reports = list(reports)
        previous = self._last
        self._last = {r.serial: r.last_report_date for r in reports}
        if previous is None:
            return []
        return [r for r in reports if previous.get(r.serial) != r.last_report_date]


# -- /ivp/livedata/status -------------------------------------------------------------------


@dataclass(frozen=True)
class LiveData:
    stream_enabled: bool | None
    last_update: float | None
    grid_w: float | None
    grid_phases_w: tuple[float, ...] | None
    pv_w: float | None
    storage_w: float | None
    load_w: float | None
    generator_w: float | None
    phase_count: int | None
    soc: float | None


def _mw(block: Any, key: str = "agg_p_mw") -> float | None:
    if not isinstance(block, Mapping) or key not in block:
        return None
    value = _opt_num(block.get(key))
    return None if value is None else value / 1000.0


def parse_livedata(data: Any) -> LiveData:
    """``/ivp/livedata/status`` (documented shape only, spec §4.7): milliwatts → W."""
    if not isinstance(data, Mapping):
        raise EnvoyParseError("/ivp/livedata/status is not an object")
    connection = _object(data, "connection")
    meters = _object(data, "meters")
    stream = connection.get("sc_stream")
    grid = meters.get("grid")
    phases = None
    if isinstance(grid, Mapping):
        found = [_mw(grid, f"agg_p_ph_{p}_mw") for p in "abc"]
        if any(v is not None for v in found):
            kept = list(found)
            while kept and kept[-1] is None:
                kept.pop()
            phases = tuple(v or 0.0 for v in kept)
    phase_count = _opt_num(meters.get("phase_count"))
    return LiveData(
        stream_enabled=None if stream is None else stream == "enabled",
        last_update=_opt_num(meters.get("last_update")) or None,
        grid_w=_mw(grid), grid_phases_w=phases, pv_w=_mw(meters.get("pv")),
        storage_w=_mw(meters.get("storage")), load_w=_mw(meters.get("load")),
        generator_w=_mw(meters.get("generator")),
        phase_count=int(phase_count) if phase_count else None,
        soc=_opt_num(meters.get("soc")))


def grid_from_livedata(live: LiveData, phase_count: int | None = None,
                       voltages: Sequence[float] = (), freq: float | None = None) -> GridSample:
    """Grid flow from livedata; per phase when the firmware sends ``agg_p_ph_*``.

    A disabled stream means the meters block is not updated: a missing sample
    (the client enables the stream). Voltages are not in livedata; the last
    ones seen elsewhere are used when known, else the nominal 230 V.
    """
    if live.stream_enabled is False:
        raise MissingSample("the livedata stream is disabled")
    if live.grid_w is None and live.grid_phases_w is None:
        raise NoGridData("no grid value in /ivp/livedata/status")
    count = phase_count or live.phase_count
    if live.grid_phases_w is not None:
        powers = list(live.grid_phases_w[:count] if count else live.grid_phases_w)
    else:
        powers = [live.grid_w or 0.0]
    phases = tuple(make_phase(w, voltages[i] if i < len(voltages) else None, pf=1.0, freq=freq)
                   for i, w in enumerate(powers))
    return GridSample(phases, live.last_update, None, "livedata")


# -- slow-path totals --------------------------------------------------------------------------


def totals_extras(report: ProductionReport | None, summary: ProductionSummary | None) -> dict[str, float]:
    """PV and house-load totals as named extra values (W and lifetime Wh).

    PV comes from the production CT when it is active; otherwise from the
    ``inverters`` entry (``/api/v1/production`` reads 0 or stalls on metered
    Envoys without CTs, spec §4.2), or from ``/api/v1/production`` when the
    report is missing (3.x). Lifetime PV energy takes the larger of the
    inverters entry and ``/api/v1/production``: lifetime counters only grow, and
    the smaller one is either wrapped at 2³² W·s (7.x inverters) or stalled.
    """
    extras: dict[str, float] = {}
    prod = report.production if report else None
    inverters = report.inverters if report else None
    if prod is not None and prod.active:
        extras["pv_power"] = prod.w_now
        extras["pv_energy_wh"] = prod.wh_lifetime
    elif inverters is not None:
        extras["pv_power"] = inverters.w_now
        energy = inverters.wh_lifetime
        if summary is not None:
            energy = max(energy, summary.wh_lifetime)
        extras["pv_energy_wh"] = energy
    elif summary is not None:
        extras["pv_power"] = summary.watts_now
        extras["pv_energy_wh"] = summary.wh_lifetime
    if inverters is not None:
        extras["inverters_reporting"] = float(inverters.active_count)
    if report is not None:
        load = report.corrected_total()
        if load is not None:
            extras["load_power"], extras["load_energy_wh"] = load
        if report.acb is not None and report.acb.active_count > 0:
            extras["acb_power"] = report.acb.w_now
            extras["acb_energy_wh"] = report.acb.wh_now
            if report.acb.percent_full is not None:
                extras["acb_soc"] = report.acb.percent_full
    return extras


def needs_summary(report: ProductionReport | None) -> bool:
    """``/api/v1/production`` is only worth a request when no production CT is active."""
    return report is None or report.production is None or not report.production.active


# -- HTTP authentication challenges ------------------------------------------------------------

_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^\s,]+)')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``WWW-Authenticate`` → ``(scheme, {param: value})``; scheme lower-cased.

    ``Digest qop="auth", realm="enphaseenergy.com", nonce="..."`` gives
    ``("digest", {"qop": "auth", "realm": "enphaseenergy.com", "nonce": "..."})``.
    """
    text = header.strip()
    scheme, _, rest = text.partition(" ")
    params = {}
    for match in _PARAM.finditer(rest):
        value = match.group(3) if match.group(3) is not None else match.group(2)
        params[match.group(1).lower()] = value.replace('\\"', '"')
    return scheme.lower(), params
