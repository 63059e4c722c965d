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
* Reconnects back off exponentially with jitter from ``reconnect_min`` to
  ``reconnect_max``; a valid telegram resets the backoff.
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
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from meteremu.backoff import next_delay
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.sources.common import SourceEvents, SourceStatus, quiet_factory
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

log = logger(__name__)

CLOSE_WAIT = 2.0
_SEVEN_BITS = bytes(b & 0x7F for b in range(256))


def describe(failure: Failure | BaseException) -> str:
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, defer.TimeoutError | defer.CancelledError | net_error.TimeoutError):
        return "timed out"
    if isinstance(exc, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, net_error.DNSLookupError):
        return "host name not found"
    if isinstance(exc, net_error.ConnectionDone):
        return "closed by the other end"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class _P1Protocol(Protocol):
    """Moves bytes to the source; one instance per connection."""

    def __init__(self, source: DsmrSource, line: LineSettings | None, strip_parity: bool = False) -> None:
        self.source = source
        self.line = line
        self.strip_parity = strip_parity
        self.telegrams = 0
        self.dropped = False  # closed by the source itself (idle watchdog, stop)
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.source._connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self.strip_parity:
            data = data.translate(_SEVEN_BITS)
        self.source._data(self, data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.closed.called:
            self.closed.callback(None)
        self.source._lost(self, reason)


class DsmrSource(SourceStatus, SourceEvents, Service):
    """Feeds a Meter from P1 telegrams (see the module docstring)."""

    type_name = "dsmr"

    def __init__(self, meter: Meter, options: DsmrOptions, reactor: Any, clock: Any = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.meter = meter
        self.options = options
        self.reactor = reactor
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
        self._connecting: Deferred[Any] | None = None
        self._timer: Any = None
        self._watchdog: Any = None
        self._stopping = True
        self._said: dict[str, str] = {}
        self._waiters: list[tuple[str, Deferred[Any]]] = []
        if options.tcp is not None:
            host, port = options.host_port()
            self.where = f"tcp {host}:{port}"
        else:
            self.where = f"serial {options.serial}"
        self._details()

    # -- lifecycle -------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._schedule(0.0)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True
        self._set_state("stopped")
        self._cancel_timers("_timer", "_watchdog")
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        proto, self.proto = self.proto, None
        if proto is None or proto.transport is None or proto.closed.called:
            return defer.succeed(None)
        self._drop(proto)
        closing = proto.closed
        timer = self.reactor.callLater(CLOSE_WAIT, lambda: closing.called or closing.callback(None))
        return closing.addBoth(lambda _: timer.cancel() if timer.active() else None)

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

    def _set_state(self, state: str) -> None:
        super()._set_state(state)
        self._emit(state)

    # -- events for tests and callers ----------------------------------------------------------
    def when(self, event: str) -> Deferred[Any]:
        """A Deferred that fires at the next ``event``: a state ("connected",
        "disconnected", …), "telegram" or "rejected"."""
        return self._wait_for(event)

    # -- connecting ----------------------------------------------------------------------------
    def _schedule(self, delay: float) -> None:
        self._call_later(delay, self._connect)

    def _backoff(self) -> float:
        return next_delay(self.attempts, self.options.reconnect_min, self.options.reconnect_max, self.rng)

    def _connect(self) -> None:
        self._timer = None
        if self._stopping:
            return
        self.attempts += 1
        self.decoder.reset()
        self._set_state("connecting")
        if self.options.tcp is not None:
            self._connect_tcp()
        else:
            self._open_serial()

    def _connect_tcp(self) -> None:
        host, port = self.options.host_port()
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.options.connect_timeout)
        d = endpoint.connect(quiet_factory(_P1Protocol, self, None))
        self._connecting = d

        def done(result: Any) -> None:
            self._connecting = None

        def failed(failure: Failure) -> None:
            self._connecting = None
            if self._stopping or failure.check(defer.CancelledError):
                return
            self._failed(f"cannot connect to {self.where}: {describe(failure)}")

        d.addCallbacks(done, failed)

    def _open_serial(self) -> None:
        line = self.line
        assert line is not None and self.options.serial is not None
        try:
            from twisted.internet.serialport import SerialPort  # needs pyserial
        except ImportError:
            self._failed("serial: needs pyserial (pip install pyserial)")
            return
        try:
            # pyserial's SerialException is an OSError; connectionMade runs in here.
            SerialPort(_P1Protocol(self, line), self.options.serial, self.reactor,
                       baudrate=line.baudrate, bytesize=line.bytesize, parity=line.parity,
                       stopbits=line.stopbits, timeout=0)
        except (OSError, ValueError) as exc:
            self._failed(f"cannot open {self.options.serial}: {describe(exc)}")
        except Exception as exc:  # termios.error: the port refuses these line settings
            if line.bytesize == 7 and self._open_eight_bits(SerialPort, line):
                return
            message = f"{self.options.serial} does not accept {line}: {describe(exc)}"
            if len(self.lines) > 1:
                self.line_index = (self.line_index + 1) % len(self.lines)
                message += f"; trying {self.lines[self.line_index]} next"
            self._failed(message)

    def _open_eight_bits(self, serial_port: Any, line: LineSettings) -> bool:
        """Open 7-bit line settings as 8N1 and strip the parity bit in software.

        Linux pseudo-terminals (socat bridges) refuse a parity or data-bit
        change at an unchanged speed; the bytes read as 8N1 carry the parity
        in bit 7, so masking it gives exactly the 7-bit data.
        """
        try:
            serial_port(_P1Protocol(self, line, strip_parity=True), self.options.serial, self.reactor,
                        baudrate=line.baudrate, bytesize=8, parity="N", stopbits=line.stopbits, timeout=0)
        except Exception:
            return False
        return True

    def _failed(self, message: str) -> None:
        self.meter.report_failure(message, down=True)
        self._say("connection", message)
        self._details_counts()
        self._schedule(self._backoff())
        self._set_state("disconnected")

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

    def _arm_watchdog(self, proto: _P1Protocol) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(self.idle)
        else:
            self._watchdog = self.clock.callLater(self.idle, self._idle, proto)

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

    def _drop(self, proto: _P1Protocol) -> None:
        proto.dropped = True
        transport = proto.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    def _lost(self, proto: _P1Protocol, reason: Failure | None) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        if self._stopping:
            return
        if not proto.dropped:  # not our own idle watchdog: the other end went away
            why = describe(reason) if reason is not None else "closed"
            self.meter.report_failure(f"P1 connection lost ({self.where}): {why}", down=True)
            self._say("connection", f"P1 connection lost ({self.where}): {why}")
        self._details_counts()
        self._schedule(self._backoff())
        self._set_state("disconnected")

    # -- telegrams --------------------------------------------------------------------------------
    def _data(self, proto: _P1Protocol, data: bytes) -> None:
        if proto is not self.proto or self._stopping:
            return
        for result in self.decoder.feed(data, self.clock.seconds()):
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
