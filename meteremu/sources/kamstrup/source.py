"""Kamstrup MULTICAL heat meters over KMP, the I/O part: the line and the poll.

The optical head (IR eye on the meter's front) is a half-duplex serial line,
1200 baud 8N2 by default; a ser2net bridge (``1200n82``) works with ``tcp:``.
Every ``interval`` the source asks for the configured registers with
GetRegister (at most 8 per request; several requests when more are
configured), waits up to ``timeout`` for each answer and retries ``retries``
times. The codec is :mod:`.kmp`, the register catalogue :mod:`.parse`.

A heat meter has no electrical phases: each poll becomes
``Reading(phases=(), measured_at=<arrival>, extras={…})`` — heat energy in kWh
(converted from GJ/MWh/Gcal as the meter reports it), volume in m³, flow in
l/h, thermal power in W, temperatures in °C. A device serving this meter
answers 0.0 for every phase (design.md §4); exporters publish the extras.
Thermal energy is *not* put in ``Reading.energy``: those counters are the
grid's electrical import/export.

Battery: every read wakes the meter's optical port and costs battery; a
battery-powered MULTICAL should be polled at most every 30-60 minutes, hence
the 1 h default. A meter that does not answer is marked down; the next poll
is tried sooner (backoff from ``retry_min`` up to ``interval``).

The line (serial port or TCP bridge) is kept open by Twisted's
``ClientService`` (:mod:`meteremu.reconnect`, :mod:`meteremu.serialendpoint`),
on the poll's schedule: one time, :attr:`KamstrupSource.next_poll`, says when
the next read is due. While the line is open a timer polls then; while it is
closed ClientService waits until then to reopen it, and a reopened line is
read at once if a read is due. So a failed read (the line is closed after it,
to start the next one afresh), a line that cannot be opened and a bridge that
drops an idle connection all come back at the next poll, never sooner: no
read costs battery outside the schedule.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from meteremu.backoff import next_delay
from meteremu.clocks import wall
from meteremu.failures import Explained, describe, exception_of
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.reading import Reading
from meteremu.reconnect import Reconnector, protocol_factory
from meteremu.serialendpoint import SerialEndpoint, SerialLine
from meteremu.sources.common import SourceEvents, SourceStatus
from meteremu.sources.kamstrup import kmp
from meteremu.sources.kamstrup.options import KamstrupOptions
from meteremu.sources.kamstrup.parse import register_extras

log = logger(__name__)


class KmpTimeout(Explained):
    pass


class _KmpProtocol(Protocol):
    """One open line to the optical head: request in, frame out."""

    transport: ITransport  # set by makeConnection

    def __init__(self, source: KamstrupSource) -> None:
        self.source = source
        self.reader = kmp.FrameReader()
        self.waiting: Deferred[bytes] | None = None
        self.lost = False

    def connectionMade(self) -> None:
        self.source._connected(self)

    def dataReceived(self, data: bytes) -> None:
        for frame in self.reader.feed(data):
            if frame == bytes((kmp.ACK,)):
                continue
            waiting, self.waiting = self.waiting, None
            if waiting is not None:
                waiting.callback(frame)

    def ask(self, request: bytes, timeout: float, clock: IReactorTime) -> Deferred[bytes]:
        if self.lost:
            return defer.fail(net_error.ConnectionDone("the line is closed"))
        self.reader.reset()
        d: Deferred[bytes] = Deferred()
        self.waiting = d
        self.transport.write(request)

        def expired(result: Any, _timeout: float) -> Any:
            if self.waiting is d:
                self.waiting = None
            raise KmpTimeout(f"no answer within {timeout:g} s")

        d.addTimeout(timeout, clock, onTimeoutCancel=expired)
        return d

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.errback(reason or Failure(net_error.ConnectionDone()))
        self.source._lost(self)


class KamstrupSource(SourceStatus, SourceEvents, Service):
    """Polls a MULTICAL over KMP and feeds a phaseless Meter (see the module docstring)."""

    type_name = "kamstrup"

    def __init__(self, meter: Meter, options: KamstrupOptions, reactor: IReactor,
                 clock: IReactorTime | None = None, rng: Callable[[], float] = random.random) -> None:
        self.meter = meter
        self.options = options
        self.reactor: IReactor = reactor
        self.clock = clock if clock is not None else reactor
        self.rng = rng
        self.registers = options.register_list()
        self.proto: _KmpProtocol | None = None
        self.state = "stopped"
        self.polls = 0
        self.failures_in_row = 0
        self.serial_number: str | None = None
        self.next_poll = 0.0
        self._timer = None
        self._polling: Deferred[Any] | None = None
        self._unreported: bool | None = None  # a read's outcome, told once the next one is scheduled
        self._stopping = True
        self._said: dict[str, str] = {}
        self._waiters: list[tuple[str, Deferred[Any]]] = []
        endpoint: IStreamClientEndpoint
        if options.tcp is not None:
            self.where = f"tcp {options.tcp}"
            host, port = options.host_port()
            endpoint = HostnameEndpoint(reactor, host, port, timeout=options.connect_timeout)
        else:
            assert options.serial is not None
            self.where = f"serial {options.serial}"
            endpoint = SerialEndpoint(reactor, options.serial, SerialLine(options.baudrate, 8, "N", options.stopbits))
        self.reconnector = Reconnector(endpoint, protocol_factory(lambda _: _KmpProtocol(self)), clock=self.clock,
                                       reactor=reactor, retry=self._until_next_poll, failed=self._open_failed,
                                       name=f"meter {meter.name}: Kamstrup {self.where}")
        self.meter.details = {"transport": self.where, "connection": self.state,
                              "registers": [f"{r.key} ({r.id:#06x})" for r in self.registers]}

    # -- lifecycle ---------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.next_poll = self.clock.seconds()
        self.reconnector.start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stop_running("_timer")
        if self._polling is not None:
            self._polling.cancel()
        return self.reconnector.stop()

    def when_polled(self) -> Deferred[bool]:
        """Fires after the next read with True (the meter answered) or False."""
        return self._wait_for("polled")

    def _read_done(self, ok: bool) -> None:
        """A read (or an attempt to open the line for one) ended; the next is due at ``next_poll``."""
        if not ok:
            self.next_poll = self.clock.seconds() + next_delay(
                self.failures_in_row, self.options.retry_min, self.options.interval, self.rng, jitter=0.25)
        else:
            self.next_poll = self.clock.seconds() + self.options.interval
        self._unreported = ok

    def _report_read(self) -> None:
        ok, self._unreported = self._unreported, None
        if ok is not None:
            self._emit("polled", ok)

    # -- the line (ClientService's hooks) ------------------------------------------------------
    def _open_failed(self, failure: Failure) -> None:
        if self._stopping or failure.check(defer.CancelledError):
            return
        self._failed(exception_of(failure))
        self._read_done(False)

    def _until_next_poll(self) -> float:
        """ClientService's retry policy: a closed line is reopened when the next read is due."""
        self._report_read()
        return max(0.0, self.next_poll - self.clock.seconds())

    def _connected(self, proto: _KmpProtocol) -> None:
        self.proto = proto
        self._set_state("open")
        self._call_later(max(0.0, self.next_poll - self.clock.seconds()), self._tick)

    def _lost(self, proto: _KmpProtocol) -> None:
        if proto is self.proto:
            self.proto = None
            self._cancel_timers("_timer")
            if not self._stopping:
                self._set_state("closed")

    def _close(self) -> None:
        proto = self.proto
        if proto is not None and not proto.lost and proto.transport is not None:
            proto.transport.loseConnection()

    # -- polling --------------------------------------------------------------------------------
    def _tick(self) -> None:
        self._timer = None
        if self._stopping or self.proto is None:
            return
        d = defer.ensureDeferred(self.poll())
        self._polling = d

        def done(ok: bool) -> None:
            self._polling = None
            self._read_done(ok)
            if ok:
                self._call_later(self.options.interval, self._tick)
                self._report_read()
            else:
                self._close()  # the next read starts on a fresh line, when ClientService reopens it

        def stopped(failure: Failure) -> None:
            self._polling = None
            if not failure.check(defer.CancelledError):
                log.failure("kamstrup poll failed unexpectedly", failure)
                self._read_done(True)
                self._call_later(self.options.interval, self._tick)

        d.addCallbacks(done, stopped)

    async def _ask(self, proto: _KmpProtocol, request: bytes, cid: int) -> kmp.Frame:
        """Send ``request`` until a valid answer with ``cid`` comes back (retries)."""
        last: BaseException | None = None
        for _attempt in range(self.options.retries + 1):
            try:
                raw = await proto.ask(request, self.options.timeout, self.clock)
                frame = kmp.decode_frame(raw)
            except (KmpTimeout, kmp.KmpError) as exc:
                last = exc
                continue
            if frame.cid != cid or frame.address != self.options.address:
                last = kmp.KmpError(f"answer to another command (CID {frame.cid:#04x})")
                continue
            return frame
        assert last is not None
        raise last

    def _failed(self, exc: BaseException) -> None:
        self.failures_in_row += 1
        message = f"Kamstrup meter on {self.where}: {describe(exc)}"
        self.meter.report_failure(message, down=True)
        self._say("poll", message)

    async def poll(self) -> bool:
        """One read of every configured register over the open line; True when the meter answered."""
        proto = self.proto
        try:
            if proto is None:
                raise net_error.ConnectionDone("the line is closed")
            values: dict[int, kmp.RegisterValue] = {}
            ids = [r.id for r in self.registers]
            for start in range(0, len(ids), kmp.MAX_REGISTERS_PER_REQUEST):
                chunk = ids[start:start + kmp.MAX_REGISTERS_PER_REQUEST]
                frame = await self._ask(proto, kmp.get_register_request(chunk, self.options.address),
                                        kmp.CID_GET_REGISTER)
                values.update(kmp.decode_registers(frame.data))
            if self.serial_number is None:
                try:
                    frame = await self._ask(proto, kmp.get_serial_request(self.options.address),
                                            kmp.CID_GET_SERIAL)
                    self.serial_number = kmp.decode_serial(frame.data)
                except (KmpTimeout, kmp.KmpError):
                    self.serial_number = ""
        except defer.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
            return False
        extras = register_extras(values, self.registers)
        missing = [r.key for r in self.registers if r.id not in values]
        self.polls += 1
        self.failures_in_row = 0
        self._said.pop("poll", None)
        details = self.meter.details
        details.update({"polls": self.polls, "serial": self.serial_number or None,
                        "missing_registers": missing,
                        "units": {r.key: kmp.UNITS.get(values[r.id].unit, "?") for r in self.registers
                                  if r.id in values}})
        if missing:
            self._say("missing", "the meter did not answer for " + ", ".join(missing), "info")
        if not extras:
            self.meter.report_failure("the meter answered none of the configured registers", down=True)
            return True
        self.meter.update(Reading(phases=(), measured_at=wall(self.clock), extras=extras))
        return True
