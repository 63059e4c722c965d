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
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from meteremu.backoff import next_delay
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.reading import Reading
from meteremu.sources.common import SourceStatus, quiet_factory
from meteremu.sources.kamstrup import kmp
from meteremu.sources.kamstrup.options import KamstrupOptions
from meteremu.sources.kamstrup.parse import register_extras

log = logger(__name__)

CLOSE_WAIT = 2.0


class KmpTimeout(Exception):
    pass


def describe(failure: Failure | BaseException) -> str:
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, KmpTimeout | defer.TimeoutError | net_error.TimeoutError):
        return "no answer"
    if isinstance(exc, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class _KmpProtocol(Protocol):
    """One open line to the optical head: request in, frame out."""

    def __init__(self, source: KamstrupSource) -> None:
        self.source = source
        self.reader = kmp.FrameReader()
        self.waiting: Deferred[bytes] | None = None
        self.closed: Deferred[None] = Deferred()
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

    def ask(self, request: bytes, timeout: float, clock: Any) -> Deferred[bytes]:
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
        if not self.closed.called:
            self.closed.callback(None)
        self.source._lost(self, reason)


class KamstrupSource(SourceStatus, Service):
    """Polls a MULTICAL over KMP and feeds a phaseless Meter."""

    type_name = "kamstrup"

    def __init__(self, meter: Meter, options: KamstrupOptions, reactor: Any, clock: Any = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.meter = meter
        self.options = options
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.rng = rng
        self.registers = options.register_list()
        self.proto: _KmpProtocol | None = None
        self.state = "stopped"
        self.polls = 0
        self.failures_in_row = 0
        self.serial_number: str | None = None
        self._timer: Any = None
        self._polling: Deferred[Any] | None = None
        self._stopping = True
        self._said: dict[str, str] = {}
        self._waiters: list[Deferred[bool]] = []
        self.where = f"tcp {options.tcp}" if options.tcp else f"serial {options.serial}"
        self.meter.details = {"transport": self.where, "connection": self.state,
                              "registers": [f"{r.key} ({r.id:#06x})" for r in self.registers]}

    # -- lifecycle ---------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._schedule(0.0)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True
        self._set_state("stopped")
        self._cancel_timers("_timer")
        if self._polling is not None:
            self._polling.cancel()
        proto, self.proto = self.proto, None
        if proto is None or proto.lost or proto.transport is None:
            return defer.succeed(None)
        proto.transport.loseConnection()
        closing = proto.closed
        timer = self.reactor.callLater(CLOSE_WAIT, lambda: closing.called or closing.callback(None))
        return closing.addBoth(lambda _: timer.cancel() if timer.active() else None)

    def when_polled(self) -> Deferred[bool]:
        """Fires after the next read with True (the meter answered) or False."""
        d: Deferred[bool] = Deferred()
        self._waiters.append(d)
        return d

    def _schedule(self, delay: float) -> None:
        self._call_later(delay, self._tick)

    # -- the line -----------------------------------------------------------------------------
    def _connected(self, proto: _KmpProtocol) -> None:
        self.proto = proto
        self._set_state("open")

    def _lost(self, proto: _KmpProtocol, reason: Failure | None) -> None:
        if proto is self.proto:
            self.proto = None
            if not self._stopping:
                self._set_state("closed")

    def _open(self) -> Deferred[_KmpProtocol]:
        if self.proto is not None and not self.proto.lost:
            return defer.succeed(self.proto)
        if self.options.tcp is not None:
            host, port = self.options.host_port()
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.options.connect_timeout)
            return endpoint.connect(quiet_factory(_KmpProtocol, self))
        try:
            from twisted.internet.serialport import SerialPort  # needs pyserial
        except ImportError:
            return defer.fail(RuntimeError("serial: needs pyserial (pip install pyserial)"))
        proto = _KmpProtocol(self)
        try:
            SerialPort(proto, self.options.serial, self.reactor, baudrate=self.options.baudrate,
                       bytesize=8, parity="N", stopbits=self.options.stopbits, timeout=0)
        except Exception as exc:  # SerialException (an OSError), termios.error, ValueError
            return defer.fail(exc)
        return defer.succeed(proto)

    def _close(self) -> None:
        proto, self.proto = self.proto, None
        if proto is not None and not proto.lost and proto.transport is not None:
            proto.transport.loseConnection()

    # -- polling --------------------------------------------------------------------------------
    def _tick(self) -> None:
        self._timer = None
        if self._stopping:
            return
        d = defer.ensureDeferred(self.poll())
        self._polling = d

        def done(ok: bool) -> None:
            self._polling = None
            if ok:
                self._schedule(self.options.interval)
            else:
                self._schedule(next_delay(self.failures_in_row, self.options.retry_min, self.options.interval,
                                          self.rng, jitter=0.25))
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(ok)

        def stopped(failure: Failure) -> None:
            self._polling = None
            if not failure.check(defer.CancelledError):
                log.failure("kamstrup poll failed unexpectedly", failure)
                self._schedule(self.options.interval)

        d.addCallbacks(done, stopped)

    async def _ask(self, request: bytes, cid: int) -> kmp.Frame:
        """Send ``request`` until a valid answer with ``cid`` comes back (retries)."""
        last: BaseException | None = None
        for _attempt in range(self.options.retries + 1):
            proto = await self._open()
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

    async def poll(self) -> bool:
        """One read of every configured register; True when the meter answered."""
        try:
            values: dict[int, kmp.RegisterValue] = {}
            ids = [r.id for r in self.registers]
            for start in range(0, len(ids), kmp.MAX_REGISTERS_PER_REQUEST):
                chunk = ids[start:start + kmp.MAX_REGISTERS_PER_REQUEST]
                frame = await self._ask(kmp.get_register_request(chunk, self.options.address),
                                        kmp.CID_GET_REGISTER)
                values.update(kmp.decode_registers(frame.data))
            if self.serial_number is None:
                try:
                    frame = await self._ask(kmp.get_serial_request(self.options.address), kmp.CID_GET_SERIAL)
                    self.serial_number = kmp.decode_serial(frame.data)
                except (KmpTimeout, kmp.KmpError):
                    self.serial_number = ""
        except defer.CancelledError:
            raise
        except Exception as exc:
            self.failures_in_row += 1
            message = f"Kamstrup meter on {self.where}: {describe(exc)}"
            self.meter.report_failure(message, down=True)
            self._say("poll", message)
            self._close()
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
        self.meter.update(Reading(phases=(), measured_at=self.clock.seconds(), extras=extras))
        return True
