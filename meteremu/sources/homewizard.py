"""HomeWizard P1 meter (HWE-P1) local API (``source: {type: homewizard, host: …}``).

* **API v1** (``api: v1``, the default): ``GET http://<host>/api/v1/data`` every
  ``interval``, no authentication ("Local API" switched on in the app). The
  body has no timestamp, so every successful poll is a new sample taken at its
  arrival time.
* **API v2** (``api: v2``, firmware ≥ 6.00): HTTPS with the device's own
  certificate and ``Authorization: Bearer <token>`` + ``X-Api-Version: 2``.
  ``mode: websocket`` (default) connects to ``wss://<host>/api/ws``, answers
  ``authorization_requested`` with ``{"type": "authorization", "data": token}``,
  waits for ``authorized``, sends ``{"type": "subscribe", "data":
  "measurement"}`` and takes every ``measurement`` push; ``mode: poll`` polls
  ``GET /api/measurement``. The body's ``timestamp`` (local time of the P1
  telegram, ISO-8601 without zone) is the sample's time (``timestamps:
  arrival`` to use the arrival time instead).

TLS for v2 (the device certificate is signed by the HomeWizard CA and names
``appliance/p1dongle/<serial>``, not an address): pin the certificate's
SHA-256 (``tls_fingerprint``), or give the HomeWizard CA (``ca_file``,
optionally with ``tls_name`` to check the name), or ``verify_ssl: false`` on
a trusted LAN. One of them is required: normal web PKI can never verify the
device.

Mapping (design.md §4): ``power_l1_w`` … are signed (+ import, − export) per
phase; without per-phase power the total goes on phase A. Voltages, currents
(absolute values: the device reports them signed), frequency. Lifetime
counters ``energy_import_kwh``/``energy_export_kwh`` (v1:
``total_power_import_kwh``…; tariff sums when the total is absent) go on
phase A, as for DSMR. Gas, water, heat (``external[]``, v1 ``total_gas_m3``),
tariff, 15-minute average, monthly peak and power-failure counts are extras.
Absent keys are "not available", never zero.

Freshness: v1 and v2 polls that fail are soft failures (the meter goes stale);
three in a row, a refused token or a lost WebSocket mark it down. The
WebSocket is also dropped and reconnected when no message came for
``idle_timeout``. The token only ever goes into the Authorization header and
the authorization message.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from meteremu.backoff import next_delay
from meteremu.configtypes import Duration
from meteremu.logs import logger
from meteremu.meter import Meter, default_stale_after
from meteremu.reading import PhaseReading, Reading
from meteremu.sources.common import SourceEvents, SourceStatus
from meteremu.tls import (
    ContextCreator,
    fingerprint,
    parse_fingerprint,
    pem_blocks,
    show_fingerprint,
)

log = logger(__name__)

NOMINAL_VOLTAGE = 230.0
NOMINAL_FREQUENCY = 50.0
MAX_BODY = 1024 * 1024
CLOSE_WAIT = 2.0
MIN_IDLE_TIMEOUT = 30.0
FAILURES_BEFORE_DOWN = 3
FUTURE_SLACK = 300.0  # a device timestamp further ahead of this host's clock is worth a warning
# Beyond these a value is a damaged body, not a measurement: it counts as absent
# (and can never overflow to inf when scaled or multiplied).
MAX_POWER_W = 1e9
MAX_VOLTAGE_V = 1e5
MAX_CURRENT_A = 1e5
MAX_ENERGY_KWH = 1e12
MIN_VOLTAGE_V = 1.0  # below this there is no usable voltage (nominal 230 V instead)


# -- options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HomeWizardOptions:
    host: str = field(metadata={"doc": "address of the P1 meter, e.g. 192.168.1.50 (optionally :port)"})
    api: Literal["v1", "v2"] = field(default="v1", metadata={
        "doc": "v1: http /api/v1/data (no auth); v2: https + token (firmware 6.00+)"})
    mode: Literal["websocket", "poll"] = field(default="websocket", metadata={
        "doc": "v2 only: push over wss://host/api/ws, or poll /api/measurement"})
    interval: Duration = field(default=1.0, metadata={
        "doc": "poll period; with the WebSocket the meter's telegram period (1s DSMR 5, 10s DSMR 4)"})
    token: str | None = field(default=None, repr=False, metadata={
        "doc": "v2 bearer token (32 hex digits) from POST /api/user after pressing the button"})
    verify_ssl: bool = field(default=True, metadata={
        "doc": "v2: false accepts any certificate (a trusted LAN only)"})
    tls_fingerprint: str | None = field(default=None, metadata={
        "doc": "v2: SHA-256 of the device certificate to pin (hex, colons allowed)"})
    ca_file: str | None = field(default=None, metadata={
        "doc": "v2: PEM file of the HomeWizard CA to verify the device certificate against"})
    tls_name: str | None = field(default=None, metadata={
        "doc": "v2 with ca_file: the name in the certificate, e.g. appliance/p1dongle/5c2fafaabbcc"})
    timeout: Duration = field(default=5.0, metadata={"doc": "whole request / handshake timeout"})
    idle_timeout: Duration | None = field(default=None, metadata={
        "doc": "WebSocket: reconnect when no message came for this long; default max(3 x interval, 30s)"})
    timestamps: Literal["meter", "arrival"] = field(default="meter", metadata={
        "doc": "v2: the measurement's own timestamp, or the arrival time"})
    timezone: str | None = field(default=None, metadata={
        "doc": "v2: zone of the device's local timestamps, e.g. Europe/Amsterdam (default: this host's)"})
    reconnect_min: Duration = field(default=1.0, metadata={"doc": "first retry delay after a failure"})
    reconnect_max: Duration = field(default=60.0, metadata={"doc": "longest retry delay"})

    def idle(self) -> float:
        return self.idle_timeout if self.idle_timeout is not None else max(3 * self.interval, MIN_IDLE_TIMEOUT)

    def tz(self) -> Any:
        return ZoneInfo(self.timezone) if self.timezone else None

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        host = self.host.strip()
        if not host or "/" in host or " " in host:
            errors.append(("host", f"an address or host name, e.g. 192.168.1.50; got {self.host!r}"))
        for name in ("interval", "timeout", "reconnect_min", "reconnect_max"):
            if not getattr(self, name) > 0:
                errors.append((name, "a duration greater than 0"))
        if self.idle_timeout is not None and not self.idle_timeout > self.interval:
            errors.append(("idle_timeout", "a duration longer than interval"))
        if self.timezone:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                errors.append(("timezone", f"an IANA time zone like Europe/Amsterdam; got {self.timezone!r}"))
        if self.api == "v1":
            for name in ("token", "tls_fingerprint", "ca_file", "tls_name"):
                if getattr(self, name):
                    errors.append((name, "api: v2 (the v1 API has no TLS and no token)"))
            return errors
        if not self.token:
            errors.append(("token", "the v2 API token (POST /api/user after pressing the button; "
                                    "see docs/sources.md)"))
        if self.tls_fingerprint is not None:
            try:
                parse_fingerprint(self.tls_fingerprint)
            except ValueError:
                errors.append(("tls_fingerprint", "a SHA-256 fingerprint: 64 hex digits, colons allowed"))
        chosen = [n for n, v in (("tls_fingerprint", self.tls_fingerprint), ("ca_file", self.ca_file),
                                 ("verify_ssl", not self.verify_ssl)) if v]
        if len(chosen) > 1:
            errors.append((chosen[1], "one of tls_fingerprint, ca_file or verify_ssl: false"))
        elif not chosen:
            errors.append(("tls_fingerprint", "a way to trust the device certificate: tls_fingerprint "
                                              "(pin it), ca_file (the HomeWizard CA) or verify_ssl: false"))
        if self.tls_name and not self.ca_file:
            errors.append(("tls_name", "ca_file as well (the name is checked against the CA-signed certificate)"))
        if self.ca_file is not None:
            try:
                load_pem_certificates(self.ca_file)
            except (OSError, ValueError) as exc:
                errors.append(("ca_file", f"a readable PEM file with a certificate ({exc})"))
        return errors


def load_pem_certificates(path: str) -> list[crypto.X509]:
    with open(path, "rb") as handle:
        pem = handle.read()
    blocks = pem_blocks(pem)
    if not blocks:
        raise ValueError("no PEM certificate found")
    return [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]


# -- pure mapping -----------------------------------------------------------------------

_V1 = {"power": "active_power_w", "phase_power": "active_power_l{n}_w",
       "voltage": "active_voltage_l{n}_v", "current": "active_current_l{n}_a",
       "freq": "active_frequency_hz", "import": "total_power_import_kwh",
       "import_t": "total_power_import_t{n}_kwh", "export": "total_power_export_kwh",
       "export_t": "total_power_export_t{n}_kwh", "tariff": "active_tariff",
       "average": "active_power_average_w", "peak": "montly_power_peak_w",  # sic, v1's spelling
       "failures": "any_power_fail_count", "long_failures": "long_power_fail_count",
       "version": "smr_version"}
_V2 = {"power": "power_w", "phase_power": "power_l{n}_w", "voltage": "voltage_l{n}_v",
       "current": "current_l{n}_a", "freq": "frequency_hz", "import": "energy_import_kwh",
       "import_t": "energy_import_t{n}_kwh", "export": "energy_export_kwh",
       "export_t": "energy_export_t{n}_kwh", "tariff": "tariff", "average": "average_power_15m_w",
       "peak": "monthly_power_peak_w", "failures": "any_power_fail_count",
       "long_failures": "long_power_fail_count", "version": "protocol_version"}

EXTERNAL_KINDS = {"gas_meter": "gas", "water_meter": "water", "warm_water_meter": "warm_water",
                  "heat_meter": "heat", "inlet_heat_meter": "inlet_heat"}
_HEAT_KWH = {"GJ": 1000 / 3.6, "MJ": 1 / 3.6, "kWh": 1.0, "MWh": 1000.0}


def _number(data: Mapping[str, Any], key: str, limit: float | None = None) -> float | None:
    """A finite number (within ``±limit``) at ``key``, else None: JSON allows integers
    far beyond float range (``1e400`` written out), and NaN/Infinity are accepted too."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    if not math.isfinite(value) or (limit is not None and abs(value) > limit):
        return None
    return value


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _phase(p: float, voltage: float | None, current: float | None, freq: float) -> PhaseReading:
    """Consistent phase values: a current that cannot carry ``p`` is derived instead."""
    v = voltage if voltage is not None and voltage >= MIN_VOLTAGE_V else NOMINAL_VOLTAGE
    i = abs(current) if current is not None else None
    if i is not None and i > 0 and v * i >= abs(p):
        s = v * i
        return PhaseReading(voltage=v, current=i, act_power=p, aprt_power=s, pf=p / s, freq=freq)
    return PhaseReading.from_power(p, voltage=v, pf=1.0, freq=freq)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_").lower() or "value"


@dataclass(frozen=True)
class Measurement:
    reading: Reading
    labels: dict[str, dict[str, str]]
    per_phase_power: bool
    smr_version: int | None
    meter_model: str | None
    devices: tuple[dict[str, Any], ...] = ()  # gas/water/heat meters, for /healthz


def parse_v1_time(value: Any, tz: Any) -> str | None:
    """v1's ``210606140010`` (YYMMDDhhmmss, device local time) → ISO-8601, or None."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or len(text) != 12 or not text.isdigit():
        return None
    try:
        moment = datetime.strptime(text, "%y%m%d%H%M%S")
    except ValueError:
        return None
    return (moment.replace(tzinfo=tz) if tz is not None else moment).isoformat()


def parse_local_time(text: Any, tz: Any) -> float | None:
    """``2024-06-28T14:12:34`` (device local time) → epoch seconds, or None."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=tz) if tz is not None else moment.astimezone()
        return moment.timestamp()
    except (ValueError, OverflowError, OSError):  # not a time, or beyond the platform's range
        return None


def parse_measurement(data: Mapping[str, Any], api: str, arrival: float, tz: Any = None,
                      timestamps: str = "meter") -> Measurement:
    """A v1 ``/api/v1/data`` or v2 ``/api/measurement`` body → Reading (ValueError if unusable)."""
    if not isinstance(data, Mapping):
        raise ValueError("the answer is not a JSON object")
    keys = _V1 if api == "v1" else _V2
    freq = _number(data, keys["freq"], 1e3) or NOMINAL_FREQUENCY
    powers = [_number(data, keys["phase_power"].format(n=n), MAX_POWER_W) for n in (1, 2, 3)]
    volts = [_number(data, keys["voltage"].format(n=n), MAX_VOLTAGE_V) for n in (1, 2, 3)]
    amps = [_number(data, keys["current"].format(n=n), MAX_CURRENT_A) for n in (1, 2, 3)]
    total = _number(data, keys["power"], MAX_POWER_W)
    phases: list[PhaseReading] = []
    per_phase = any(p is not None for p in powers)
    if per_phase:
        count = max(n + 1 for n in range(3) if powers[n] is not None or volts[n] is not None)
        for n in range(count):
            phases.append(_phase(powers[n] or 0.0, volts[n], amps[n], freq))
    elif total is not None:
        phases.append(_phase(total, volts[0], None, freq))
        for n in (1, 2):
            if volts[n] is not None and volts[n] >= MIN_VOLTAGE_V:
                phases.append(PhaseReading(volts[n], 0.0, 0.0, 0.0, 0.0, freq))

    extras: dict[str, float] = {}
    labels: dict[str, dict[str, str]] = {}
    devices: list[dict[str, Any]] = []
    sums = {}
    for direction in ("import", "export"):
        tariffs = [_number(data, keys[f"{direction}_t"].format(n=n), MAX_ENERGY_KWH) for n in (1, 2, 3, 4)]
        for n, value in enumerate(tariffs, 1):
            if value is not None:
                extras[f"energy_{direction}_t{n}_kwh"] = value
        value = _number(data, keys[direction], MAX_ENERGY_KWH)
        if value is None and any(t is not None for t in tariffs):
            value = sum(t for t in tariffs if t is not None)
        sums[direction] = value
    energy = None
    if sums["import"] is not None or sums["export"] is not None:
        energy = ((1000.0 * (sums["import"] or 0.0), 1000.0 * (sums["export"] or 0.0)),)
    for name, key in (("tariff", "tariff"), ("average", "average_demand_w"), ("peak", "month_peak_w"),
                      ("failures", "power_failures"), ("long_failures", "long_power_failures")):
        value = _number(data, keys[name])
        if value is not None:
            extras[key] = value
    if api == "v1" and _number(data, "total_gas_m3") is not None:
        extras["gas_m3"] = _number(data, "total_gas_m3")  # type: ignore[assignment]
        labels["gas_m3"] = {"kind": "gas"}
        if isinstance(data.get("gas_unique_id"), str):
            labels["gas_m3"]["unique_id"] = data["gas_unique_id"]
        devices.append({"key": "gas_m3", "type": "gas_meter", "value": extras["gas_m3"], "unit": "m3",
                        "at": parse_v1_time(data.get("gas_timestamp"), tz)})
    external = data.get("external")
    for item in external if isinstance(external, list) else []:
        if not isinstance(item, Mapping):
            continue
        value = _number(item, "value")
        unit = item.get("unit") if isinstance(item.get("unit"), str) else ""
        kind = EXTERNAL_KINDS.get(str(item.get("type")), _slug(str(item.get("type") or "external")))
        if value is None:
            continue
        if kind in ("heat", "inlet_heat") and unit in _HEAT_KWH:
            key, value = f"{kind}_energy_kwh", _finite(value * _HEAT_KWH[unit])
            if value is None:
                continue
        else:
            key = f"{kind}_{_slug(unit)}"
        ident = item.get("unique_id") if isinstance(item.get("unique_id"), str) else ""
        if key in extras:
            if labels.get(key, {}).get("unique_id") == ident and ident:
                continue  # v1 lists the gas meter twice (total_gas_m3 and external)
            key = f"{key}.{ident or len(extras)}"
        extras[key] = value
        labels[key] = {"kind": kind, **({"unique_id": ident} if ident else {})}
        stamp = item.get("timestamp")
        devices.append({"key": key, "type": item.get("type"), "value": item.get("value"), "unit": unit,
                        "at": parse_v1_time(stamp, tz) if api == "v1" else stamp})
    if not phases and energy is None and not extras:
        raise ValueError("no power, energy or meter value in the answer")
    measured = arrival
    if api == "v2" and timestamps == "meter":
        measured = parse_local_time(data.get("timestamp"), tz) or arrival
    version = _number(data, keys["version"])
    model = data.get("meter_model")
    return Measurement(
        reading=Reading(phases=tuple(phases), measured_at=measured, energy=energy, extras=extras),
        labels=labels, per_phase_power=per_phase,
        smr_version=int(version) if version is not None else None,
        meter_model=model if isinstance(model, str) else None, devices=tuple(devices),
    )


# -- TLS ----------------------------------------------------------------------------------


@implementer(IPolicyForHTTPS)
class DeviceTLS:
    """Trust exactly the device: a pinned SHA-256, a CA (+ name), or anything.

    ``seen`` keeps the fingerprint of the last certificate shown, so an error
    can tell the user what to pin.
    """

    def __init__(self, fingerprint: bytes | None = None, ca: list[crypto.X509] | None = None,
                 name: str | None = None) -> None:
        self.fingerprint = fingerprint
        self.ca = ca
        self.name = name
        self.seen: str | None = None
        self.problem: str | None = None
        self.context = CertificateOptions(verify=False).getContext()
        if ca:
            store = self.context.get_cert_store()
            for cert in ca:
                store.add_cert(cert)
        self.context.set_verify(SSL.VERIFY_PEER, self._check)

    @classmethod
    def from_options(cls, options: HomeWizardOptions) -> DeviceTLS:
        if options.tls_fingerprint:
            return cls(fingerprint=parse_fingerprint(options.tls_fingerprint))
        if options.ca_file:
            return cls(ca=load_pem_certificates(options.ca_file), name=options.tls_name)
        return cls()

    def _check(self, connection: Any, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if depth == 0:
            digest = fingerprint(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))
            self.seen = show_fingerprint(digest)
        if self.fingerprint is not None:
            if depth > 0:
                return True
            if digest != self.fingerprint:
                self.problem = f"certificate does not match tls_fingerprint (the device shows {self.seen})"
                return False
            self.problem = None
            return True
        if self.ca is not None:
            if not ok:
                self.problem = f"certificate not signed by ca_file (error {errno}; the device shows {self.seen})"
                return False
            if depth == 0 and self.name and not _names_match(cert, self.name):
                self.problem = f"certificate is not for {self.name}"
                return False
            self.problem = None
            return True
        return True  # verify_ssl: false

    def creatorForNetloc(self, hostname: bytes, port: int) -> ContextCreator:
        return ContextCreator(self)


def _names_match(cert: crypto.X509, name: str) -> bool:
    subject = cert.get_subject()
    if subject.CN == name:
        return True
    for i in range(cert.get_extension_count()):
        ext = cert.get_extension(i)
        if ext.get_short_name() == b"subjectAltName" and f"DNS:{name}" in str(ext).split(", "):
            return True
    return False


# -- I/O ---------------------------------------------------------------------------------


class AuthError(Exception):
    pass


class HTTPStatusError(Exception):
    pass


def describe(failure: Failure | BaseException, tls: DeviceTLS | None = None) -> str:
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, AuthError | HTTPStatusError):
        return str(exc)
    if tls is not None and tls.problem:
        return f"TLS: {tls.problem}"
    if isinstance(exc, defer.TimeoutError | defer.CancelledError | net_error.TimeoutError):
        return "timed out"
    if isinstance(exc, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, net_error.DNSLookupError):
        return "host name not found"
    reasons = getattr(exc, "reasons", None)
    if reasons:
        inner = reasons[0].value
        if isinstance(inner, SSL.Error):
            return "TLS handshake failed"
        return describe(inner, tls)
    if isinstance(exc, SSL.Error):
        return "TLS handshake failed"
    if isinstance(exc, ValueError):
        return f"unusable answer: {str(exc)[:120]}"
    return type(exc).__name__


class _Body(Protocol):
    def __init__(self, done: Deferred[bytes], limit: int) -> None:
        self.done = done
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.transport.loseConnection()
            if not self.done.called:
                self.done.errback(ValueError(f"answer larger than {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


class _Discard(Protocol):
    """Reads and drops the body of an error response; ``done`` fires at its end."""

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.callback(None)


def _read_body(response: Any, limit: int = MAX_BODY) -> Deferred[bytes]:
    body: _Body

    def cancel(d: Deferred[bytes]) -> None:
        if body.transport is not None:
            body.transport.loseConnection()

    done: Deferred[bytes] = Deferred(cancel)
    body = _Body(done, limit)
    response.deliverBody(body)
    return done


def host_port(host: str, default: int) -> tuple[str, int]:
    """``"192.168.1.50"``, ``"p1.local:8443"`` or ``"[fe80::1]:443"`` → (host, port)."""
    text = host.strip()
    if text.startswith("["):
        name, _, rest = text[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else default
    if text.count(":") == 1:
        name, _, port = text.partition(":")
        if port.isdigit():
            return name, int(port)
    return text, default


class _WebSocket(WebSocketClientProtocol):
    """Autobahn callbacks → the source (one instance per connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed: Deferred[None] = Deferred()
        self.reason: str | None = None  # why the source closed it

    def onOpen(self) -> None:
        self.factory.source.ws_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.source.ws_message(self, payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.source.ws_closed(self, code, reason)


class HomeWizardSource(SourceStatus, SourceEvents, Service):
    """Feeds a Meter from a HomeWizard P1 meter (see the module docstring)."""

    type_name = "homewizard"

    def __init__(self, meter: Meter, options: HomeWizardOptions, reactor: Any, clock: Any = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.meter = meter
        self.options = options
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.rng = rng
        self.tz = options.tz()
        self.tls = DeviceTLS.from_options(options) if options.api == "v2" else None
        host = options.host.strip()
        if options.api == "v1":
            self.url = f"http://{host}/api/v1/data"
        else:
            self.url = f"https://{host}/api/measurement"
        self.ws_url = f"wss://{host}/api/ws"
        self.push = options.api == "v2" and options.mode == "websocket"
        self.state = "stopped"
        self.failures_in_row = 0
        self.samples = 0
        self.connections = 0
        self.auth_failed = False
        self._stopping = True
        self._timer: Any = None
        self._watchdog: Any = None
        self._pool: Any = None
        self._http: Any = None
        self._inflight: Deferred[Any] | None = None
        self._discarding: set[Deferred[None]] = set()
        self._connecting: Deferred[Any] | None = None
        self.ws: _WebSocket | None = None
        self._said: dict[str, str] = {}
        self._waiters: list[tuple[str, Deferred[Any]]] = []
        self._stale_adjusted = False
        self._last_stamp: float | None = None  # the last sample's own time, as parsed
        self._last_measured: float | None = None  # … and the time it was published with
        self.meter.details = {"url": self.ws_url if self.push else self.url, "api": options.api,
                              "mode": "websocket" if self.push else "poll", "connection": self.state}

    # -- lifecycle -----------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        if not self.push:
            self._pool = HTTPConnectionPool(self.reactor, persistent=True)
            self._pool.maxPersistentPerHost = 1
            self._pool.retryAutomatically = False
            kwargs: dict[str, Any] = {"pool": self._pool, "connectTimeout": self.options.timeout}
            if self.tls is not None:
                kwargs["contextFactory"] = self.tls
            self._http = Agent(self.reactor, **kwargs)
        self._schedule(0.0)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True
        self._set_state("stopped")
        self._cancel_timers("_timer", "_watchdog")
        for d in (self._inflight, self._connecting):
            if d is not None and not d.called:
                d.cancel()
        waits: list[Deferred[Any]] = []
        ws = self.ws
        if ws is not None and not ws.closed.called:
            if ws.state == ws.STATE_OPEN:
                ws.sendClose(1000)
            else:
                ws.dropConnection(abort=True)
            timer = self.reactor.callLater(CLOSE_WAIT, ws.dropConnection, abort=True)
            waits.append(ws.closed.addBoth(lambda _: timer.cancel() if timer.active() else None))
        pool, self._pool = self._pool, None
        if pool is not None:
            # An error body still being read would put its connection back in the
            # pool after closeCachedConnections: let those finish first (bounded).
            bodies = defer.DeferredList(list(self._discarding), consumeErrors=True)
            bodies.addTimeout(CLOSE_WAIT, self.reactor)
            waits.append(bodies.addBoth(lambda _: pool.closeCachedConnections()))
        return defer.DeferredList(waits, consumeErrors=True)

    # -- status ----------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        super()._set_state(state)
        self._emit(state)

    def when(self, event: str) -> Deferred[Any]:
        """Fires at the next ``event``: a connection state, "sample" or "failure"."""
        return self._wait_for(event)

    def _schedule(self, delay: float) -> None:
        self._call_later(delay, self._connect if self.push else self._poll)

    def _backoff(self) -> float:
        if self.auth_failed:
            return self.options.reconnect_max
        return next_delay(self.failures_in_row, self.options.reconnect_min, self.options.reconnect_max, self.rng)

    # -- samples ----------------------------------------------------------------------------
    def _take(self, data: Any) -> Measurement:
        """Parse and hand a body to the Meter (ValueError if it is unusable)."""
        measurement = parse_measurement(data, self.options.api, self.clock.seconds(), self.tz,
                                        self.options.timestamps)
        self.failures_in_row = 0
        self.auth_failed = False
        self.samples += 1
        self._said.pop("failure", None)
        self.meter.extra_labels = measurement.labels
        self.meter.details.update({
            "samples": self.samples, "meter_model": measurement.meter_model,
            "smr_version": measurement.smr_version, "devices": list(measurement.devices),
            "phase_power": "per phase" if measurement.per_phase_power else "total on phase A"})
        self._adjust_stale_after(measurement.smr_version)
        self.meter.update(self._monotonic(measurement.reading))
        return measurement

    def _monotonic(self, reading: Reading) -> Reading:
        """The device's timestamp made monotonic, as the Envoy source does.

        The Meter drops a reading not newer than the latest one (a repeated
        sample): after one timestamp from the future (a device clock glitch)
        every later, correct one would be dropped until that date. A repeated
        timestamp stays a repeat; a different one that is not newer than the last
        published time is published 1 ms after it.
        """
        stamp = reading.measured_at
        if stamp > self.clock.seconds() + FUTURE_SLACK:
            self._say("clock", f"the device's timestamp is {stamp - self.clock.seconds():.0f} s ahead of this "
                               "host's clock (timestamps: arrival ignores it)")
        else:
            self._said.pop("clock", None)
        last = self._last_measured
        if last is None or stamp > last:
            measured = stamp
        elif stamp == self._last_stamp:
            measured = last  # the same sample again: not new
        else:
            measured = last + 0.001  # the device's clock went back: still a new sample
        self._last_stamp, self._last_measured = stamp, measured
        return reading if measured == stamp else dataclasses.replace(reading, measured_at=measured)

    def _adjust_stale_after(self, version: int | None) -> None:
        """A DSMR 2-4 meter sends every 10 s: 1 s defaults would flap between fresh and stale."""
        if self._stale_adjusted or version is None or version >= 50 or api_timestamps_arrival(self):
            return
        self._stale_adjusted = True
        if self.meter.stale_after == default_stale_after(self.options.interval) and self.meter.stale_after < 30:
            self.meter.stale_after = 30.0
            self.meter.details["stale_after"] = "30 s (a DSMR 4 meter sends every 10 s)"
            self._say("stale", "the P1 meter is DSMR 4 (a telegram every 10 s): stale_after set to 30 s", "info")

    def _failed(self, message: str, down: bool = False) -> None:
        """Count a failure; three in a row (or ``down``) mark the meter down."""
        self.failures_in_row += 1
        down = down or self.failures_in_row >= FAILURES_BEFORE_DOWN
        self.meter.report_failure(message, down=down)
        self._say("failure", message)

    # -- polling (v1, v2 poll) -----------------------------------------------------------------
    def _poll(self) -> None:
        self._timer = None
        if self._stopping:
            return
        headers = {b"Accept": [b"application/json"]}
        if self.options.api == "v2":
            headers[b"Authorization"] = [f"Bearer {self.options.token}".encode()]
            headers[b"X-Api-Version"] = [b"2"]
        started = self.clock.seconds()
        d = self._http.request(b"GET", self.url.encode(), Headers(headers))

        def got(response: Any) -> Deferred[bytes]:
            if response.code != 200:
                discard = _Discard()
                self._discarding.add(discard.done)
                discard.done.addBoth(lambda _: self._discarding.discard(discard.done))
                response.deliverBody(discard)
                if response.code in (401, 403):
                    raise AuthError(f"the device rejected the token (HTTP {response.code})")
                raise HTTPStatusError(f"HTTP {response.code} from /{self.url.split('/', 3)[-1]}")
            return _read_body(response)

        d.addCallback(got)
        d.addCallback(json.loads)
        d.addTimeout(self.options.timeout, self.clock)
        self._inflight = d

        def ok(data: Any) -> None:
            self._inflight = None
            try:
                measurement = self._take(data)
            except ValueError as exc:
                failed(Failure(exc))
                return
            except Exception as exc:  # noqa: BLE001 - whatever it is, the poll loop must go on
                log.failure("HomeWizard: unexpected error taking a sample", Failure(exc))
                failed(Failure(exc))
                return
            self._schedule(max(0.0, self.options.interval - (self.clock.seconds() - started)))
            self._set_state("polling")
            self._emit("sample", measurement)

        def failed(failure: Failure) -> None:
            self._inflight = None
            if self._stopping:
                return
            if failure.check(AuthError):
                self.auth_failed = True
                message = f"HomeWizard {describe(failure)}"
                self._failed(message, down=True)
                state = "bad token"
            else:
                message = f"HomeWizard poll failed: {describe(failure, self.tls)}"
                self._failed(message)
                state = "failing"
            self._schedule(self._backoff())
            self._set_state(state)
            self._emit("failure", message)

        d.addCallbacks(ok, failed)

    # -- WebSocket (v2) ------------------------------------------------------------------------------
    def _connect(self) -> None:
        self._timer = None
        if self._stopping:
            return
        assert self.tls is not None
        self.tls.problem = None
        factory = WebSocketClientFactory(self.ws_url)
        factory.protocol = _WebSocket
        factory.source = self
        factory.noisy = False
        factory.setProtocolOptions(openHandshakeTimeout=self.options.timeout,
                                   maxMessagePayloadSize=MAX_BODY, maxFramePayloadSize=MAX_BODY)
        host, port = host_port(self.options.host, 443)
        endpoint = wrapClientTLS(self.tls.creatorForNetloc(host.encode(), port),
                                 HostnameEndpoint(self.reactor, host, port, timeout=self.options.timeout))
        d = endpoint.connect(factory)
        self._connecting = d
        self._set_state("connecting")

        def connected(proto: _WebSocket) -> None:
            self._connecting = None
            if self._stopping:
                proto.dropConnection(abort=True)
                return
            self.ws = proto
            # The TLS and WebSocket handshakes are still to come; the device
            # waits 40 s for the token after that.
            self._arm_watchdog(2 * self.options.timeout + 40.0)

        def failed(failure: Failure) -> None:
            self._connecting = None
            if self._stopping or failure.check(defer.CancelledError):
                return
            message = f"cannot connect to {self.ws_url}: {describe(failure, self.tls)}"
            self._failed(message, down=True)
            self._schedule(self._backoff())
            self._set_state("disconnected")
            self._emit("failure", message)

        d.addCallbacks(connected, failed)

    def ws_opened(self, proto: _WebSocket) -> None:
        if proto is not self.ws or self._stopping:
            proto.dropConnection(abort=True)
            return
        self.connections += 1
        self._set_state("authorizing")

    def ws_message(self, proto: _WebSocket, payload: bytes) -> None:
        if proto is not self.ws or self._stopping:
            return
        try:
            message = json.loads(payload)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            self._say("frame", "ignoring a WebSocket frame that is not JSON")
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        data = message.get("data")
        if kind == "authorization_requested":
            proto.sendMessage(json.dumps({"type": "authorization", "data": self.options.token}).encode())
        elif kind == "authorized":
            proto.sendMessage(json.dumps({"type": "subscribe", "data": "measurement"}).encode())
            self._arm_watchdog(self.options.idle())
            self._set_state("subscribing")
        elif kind == "measurement":
            try:
                measurement = self._take(data)
            except ValueError as exc:
                self._say("frame", f"ignoring an unusable measurement: {exc}")
                return
            except Exception as exc:  # noqa: BLE001 - a bug must not escape into autobahn
                log.failure("HomeWizard: unexpected error taking a measurement", Failure(exc))
                self._say("frame", f"ignoring a measurement that could not be taken ({type(exc).__name__})")
                return
            self._arm_watchdog(self.options.idle())
            if self.state != "connected":
                self._set_state("connected")
            self._emit("sample", measurement)
        elif kind == "error":
            text = str(data.get("message") if isinstance(data, dict) else data)
            if "unauthorized" in text:
                self.auth_failed = True
                proto.reason = "HomeWizard rejected the token (user:unauthorized)"
                proto.sendClose(1000)
            else:
                self._say("error", f"HomeWizard WebSocket error: {text[:120]}")

    def _arm_watchdog(self, seconds: float) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(seconds)
        else:
            self._watchdog = self.clock.callLater(seconds, self._idle)

    def _idle(self) -> None:
        self._watchdog = None
        ws = self.ws
        if ws is None or self._stopping:
            return
        ws.reason = f"no message from {self.ws_url} for {self.options.idle():g} s; reconnecting"
        ws.dropConnection(abort=True)

    def ws_closed(self, proto: _WebSocket, code: int | None, reason: str | None) -> None:
        if not proto.closed.called:
            proto.closed.callback(None)
        if proto is not self.ws:
            return
        self.ws = None
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        if self._stopping:
            return
        assert self.tls is not None
        if proto.reason:
            message = proto.reason
        elif self.tls.problem:
            message = f"cannot connect to {self.ws_url}: TLS: {self.tls.problem}"
        else:
            message = f"HomeWizard WebSocket closed ({code}{': ' + reason[:80] if reason else ''})"
        self._failed(message, down=True)
        self._schedule(self._backoff())
        self._set_state("bad token" if self.auth_failed else "disconnected")
        self._emit("failure", message)


def api_timestamps_arrival(source: HomeWizardSource) -> bool:
    """Samples timed on arrival are new on every poll: no flapping to correct."""
    return source.options.api == "v1" or source.options.timestamps == "arrival"


# -- registry hooks (meteremu.sources) -----------------------------------------------------

Options = HomeWizardOptions
PUSH = False  # freshness follows interval (the WebSocket pushes once per P1 telegram)


def make_source(meter: Meter, options: HomeWizardOptions, reactor: Any, store: Any = None) -> HomeWizardSource:
    return HomeWizardSource(meter, options, reactor)
