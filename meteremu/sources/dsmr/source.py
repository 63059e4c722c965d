"""DSMR / P1, the I/O part: a serial port or a TCP stream → P1Decoder → Meter.

Connection life::

    connect (serial port opened with the current line settings, or TCP)
       │  bytes ──> P1Decoder ──> Accepted: Meter.update, watchdog re-armed
       │                     └──> Rejected (bad CRC, unparseable): counted, soft failure
       ├─ no valid telegram for idle_timeout ──> drop the port / connection
       └─ connection lost / cannot open ──> Meter down, reconnect after backoff

* The **idle watchdog** (``idle_timeout``, default max(3 × interval, 30 s)) is
  longer than the meter's send interval, so a DSMR 4 meter that sends every
  10 s is not reconnected between two telegrams (HA core #85706). It is re-armed
  by valid telegrams only: a line that delivers nothing but garbage is reopened.
* ``version: auto`` on a serial port tries the line settings of DSMR 5
  (115200 8N1), DSMR 4 (115200 7E1) and DSMR 2.2/3 (9600 7E1) in turn: a
  connection that brings no valid telegram within the idle timeout is reopened
  with the next settings; the ones that work are kept as long as telegrams flow.
* Reconnects go through Twisted's ``ClientService`` (:mod:`meteremu.reconnect`;
  a serial port is an endpoint too, :mod:`meteremu.serialendpoint`). They back
  off exponentially with jitter from ``reconnect_min`` to ``reconnect_max``,
  counting attempts since the last valid telegram: a valid telegram resets
  the backoff (not merely a connection, which a dead bridge accepts too).
* While disconnected the Meter is ``down`` (it leaves ``down`` with the next
  telegram, which always has a new timestamp). Bad CRCs and parse errors are
  soft failures: counted in ``/healthz`` (``details``) and the failure counter.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from meteremu.backoff import next_delay
from meteremu.clocks import wall
from meteremu.failures import describe, exception_of
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.reconnect import Reconnector, protocol_factory
from meteremu.serialendpoint import PortUnavailable, SerialAddress, SerialEndpoint, SerialLine
from meteremu.sources.common import StatefulEvents
from meteremu.sources.dsmr.options import DsmrOptions
from meteremu.sources.dsmr.parse import (
    SERIAL_PROBE_ORDER,
    VERSIONS,
    Accepted,
    LineSettings,
    P1Decoder,
    Rejected,
    parse_line,
)
from meteremu.sources.streamlink import StreamWatchdog

log = logger(__name__)

_SEVEN_BITS = bytes(b & 0x7F for b in range(256))
WAIT_WHILE_STOPPING = 3600.0  # stopService cancels it: a retry never comes while stopping


class LineRefused(Exception):
    """The serial port refuses these line settings (a termios error)."""

    def __init__(self, line: LineSettings, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.line = line
        self.cause = cause


@implementer(IStreamClientEndpoint)
class _P1SerialEndpoint:
    """The P1 port with the source's current line settings.

    Linux pseudo-terminals (socat bridges) refuse a parity or data-bit change
    at an unchanged speed; 7-bit settings are then opened as 8N1 and the
    protocol strips the parity bit in software (the bytes read as 8N1 carry
    it in bit 7, so masking it gives exactly the 7-bit data).
    """

    def __init__(self, source: DsmrSource, device: str) -> None:
        self.source = source
        self.device = device

    def __repr__(self) -> str:
        return f"<P1 serial {self.device}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        line = self.source.line
        assert line is not None
        reactor = self.source.reactor
        d = SerialEndpoint(reactor, self.device, line).connect(protocolFactory)

        def refused(failure: Failure) -> Any:
            if failure.check(OSError, ValueError, PortUnavailable):
                return failure
            if line.bytesize != 7:
                raise LineRefused(line, exception_of(failure))
            eight = SerialLine(line.baudrate, 8, "N", line.stopbits)
            again = SerialEndpoint(reactor, self.device, eight).connect(protocolFactory)

            def still_refused(_: Failure) -> None:
                raise LineRefused(line, exception_of(failure))

            return again.addErrback(still_refused)

        return d.addErrback(refused)


class _P1Protocol(Protocol):
    """Moves bytes to the source; one instance per connection."""

    def __init__(self, source: DsmrSource, line: LineSettings | None, strip_parity: bool = False) -> None:
        self.source = source
        self.line = line
        self.strip_parity = strip_parity
        self.telegrams = 0
        self.dropped = False  # closed by the source itself (idle watchdog, stop)

    def connectionMade(self) -> None:
        self.source._connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self.strip_parity:
            data = data.translate(_SEVEN_BITS)
        self.source._data(self, data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.source._lost(self, reason)


class DsmrSource(StreamWatchdog, StatefulEvents, Service):
    """Feeds a Meter from P1 telegrams (see the module docstring).

    Events for ``when``: a state ("connected", "disconnected", …), "telegram" or "rejected".
    """

    type_name = "dsmr"

    def __init__(self, meter: Meter, options: DsmrOptions, reactor: IReactor, clock: IReactorTime | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.meter = meter
        self.options = options
        self.reactor: IReactor = reactor
        self.clock = clock if clock is not None else reactor
        self.rng = rng
        self.version = options.spec_name()
        self.decoder = P1Decoder(self.version, options.check_crc, options.timestamps, *options.keys())
        self.idle = options.idle()
        if options.line is not None:
            self.lines: tuple[LineSettings, ...] = (parse_line(options.line),)
        elif self.version != "auto":
            self.lines = (VERSIONS[self.version].line,)
        else:
            self.lines = SERIAL_PROBE_ORDER
        self.line_index = 0
        self.state = "stopped"
        self.attempts = 0
        self.connections = 0
        self.proto: _P1Protocol | None = None
        self._watchdog: IDelayedCall | None = None
        self._stopping = True
        self._said: dict[str, str] = {}
        self._waiters: list[tuple[str, Deferred[Any]]] = []
        endpoint: IStreamClientEndpoint
        if options.tcp is not None:
            host, port = options.host_port()
            self.where = f"tcp {host}:{port}"
            endpoint = HostnameEndpoint(reactor, host, port, timeout=options.connect_timeout)
        else:
            assert options.serial is not None
            self.where = f"serial {options.serial}"
            endpoint = _P1SerialEndpoint(self, options.serial)
        self.reconnector = Reconnector(endpoint, protocol_factory(self._build), clock=self.clock, reactor=reactor,
                                       retry=self._retry_delay, attempting=self._attempting,
                                       failed=self._attempt_failed, name=f"meter {meter.name}: P1 {self.where}")
        self._details()

    # -- lifecycle -------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.reconnector.start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stop_running("_watchdog")
        return self.reconnector.stop()

    # -- status -----------------------------------------------------------------------------
    @property
    def line(self) -> LineSettings | None:
        return None if self.options.tcp is not None else self.lines[self.line_index]

    def _details(self, values: Any = None) -> None:
        details: dict[str, object] = dict(self.meter.details) if values is not None else {}
        details.update({
            "transport": self.where,
            "connection": self.state,
            "version": self.version,
            "spec": self.decoder.last_spec,
            "idle_timeout": self.idle,
            "connections": self.connections,
            "discarded_bytes": self.decoder.framer.discarded,
            **self.decoder.counts,
        })
        if self.line is not None:
            details["line"] = str(self.line)
        if values is not None:
            details["equipment_id"] = values.equipment_id
            details["p1_version"] = values.p1_version
            details["phase_power"] = "per phase" if values.per_phase_power else "total on phase A"
            details["mbus"] = [{
                "channel": m.channel, "kind": m.kind, "key": m.key, "value": m.raw,
                "device_type": m.device_type, "equipment_id": m.equipment_id,
                "at": datetime.fromtimestamp(m.at, UTC).isoformat() if m.at is not None else None,
            } for m in values.mbus]
        self.meter.details = details

    # -- events for tests and callers ----------------------------------------------------------
    # -- connecting (ClientService's hooks, see meteremu.reconnect) -------------------------------
    def _build(self, address: Any) -> _P1Protocol:
        if not isinstance(address, SerialAddress):
            return _P1Protocol(self, None)
        wanted = self.line
        assert wanted is not None
        return _P1Protocol(self, wanted, strip_parity=wanted.bytesize == 7 and address.line.bytesize == 8)

    def _attempting(self) -> None:
        self.attempts += 1
        self.decoder.reset()
        self._set_state("connecting")

    def _attempt_failed(self, failure: Failure) -> None:
        if self._stopping or failure.check(defer.CancelledError):
            return
        exc = exception_of(failure)
        if self.options.tcp is not None:
            message = f"cannot connect to {self.where}: {describe(exc)}"
        elif isinstance(exc, PortUnavailable):
            message = str(exc)
        elif isinstance(exc, LineRefused):
            message = f"{self.options.serial} does not accept {exc.line}: {describe(exc.cause)}"
            if len(self.lines) > 1:
                self.line_index = (self.line_index + 1) % len(self.lines)
                message += f"; trying {self.lines[self.line_index]} next"
        else:
            message = f"cannot open {self.options.serial}: {describe(exc)}"
        self.meter.report_failure(message, down=True)
        self._say("connection", message)
        self._details_counts()

    def _retry_delay(self) -> float:
        """ClientService's retry policy: the next wait, counted since the last valid telegram."""
        if self._stopping:
            return WAIT_WHILE_STOPPING
        self._details_counts()
        self._set_state("disconnected")
        return next_delay(self.attempts, self.options.reconnect_min, self.options.reconnect_max, self.rng)

    def _connected(self, proto: _P1Protocol) -> None:
        if self._stopping:
            self._drop(proto)
            return
        self.proto = proto
        self.connections += 1
        suffix = f" at {proto.line}" if proto.line is not None else ""
        if proto.strip_parity:
            suffix += " (opened as 8N1, parity bit stripped: the port refuses 7-bit settings)"
        self._say("connection", f"connected to {self.where}{suffix}", "info")
        self._arm_watchdog(proto)
        self._details_counts()
        self._set_state("connected")

    def _idle(self, proto: _P1Protocol) -> None:
        self._watchdog = None
        if proto is not self.proto or self._stopping:
            return
        message = f"no valid P1 telegram from {self.where} for {self.idle:g} s"
        if proto.line is not None and proto.telegrams == 0 and len(self.lines) > 1:
            self.line_index = (self.line_index + 1) % len(self.lines)
            message += f" at {proto.line}; trying {self.lines[self.line_index]} next"
        self.meter.report_failure(message, down=True)
        self._say("connection", message)
        self._drop(proto)

    def _lost(self, proto: _P1Protocol, reason: Failure | None) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        self._cancel_timers("_watchdog")
        if self._stopping:
            return
        if not proto.dropped:  # not our own idle watchdog: the other end went away
            why = describe(reason) if reason is not None else "closed"
            self.meter.report_failure(f"P1 connection lost ({self.where}): {why}", down=True)
            self._say("connection", f"P1 connection lost ({self.where}): {why}")
        self._details_counts()

    # -- telegrams --------------------------------------------------------------------------------
    def _data(self, proto: _P1Protocol, data: bytes) -> None:
        if proto is not self.proto or self._stopping:
            return
        for result in self.decoder.feed(data, wall(self.clock)):
            if isinstance(result, Accepted):
                self._accepted(proto, result)
            elif isinstance(result, Rejected):
                self._rejected(result)
            if self.proto is not proto:
                return

    def _accepted(self, proto: _P1Protocol, result: Accepted) -> None:
        proto.telegrams += 1
        self.attempts = 0
        self._said.pop("connection", None)
        self._said.pop("rejected", None)
        self._arm_watchdog(proto)
        self.meter.extra_labels = {m.key: {"channel": str(m.channel), "kind": m.kind}
                                   for m in result.values.mbus}
        self._details(result.values)
        self.meter.update(result.reading)
        self._emit("telegram", result)

    def _rejected(self, result: Rejected) -> None:
        self.meter.report_failure(f"P1 telegram dropped: {result.detail}", down=False)
        self._say("rejected", f"P1 telegram dropped ({result.reason}): {result.detail}")
        self._details_counts()
        self._emit("rejected", result)

    def _details_counts(self) -> None:
        details = self.meter.details
        if not isinstance(details, dict):
            return
        details.update(self.decoder.counts)
        details["discarded_bytes"] = self.decoder.framer.discarded
        details["connections"] = self.connections
        if self.line is not None:
            details["line"] = str(self.line)
