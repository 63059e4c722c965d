"""The SML source's I/O: a serial port or a TCP stream → :class:`~meteremu.sources.smlparse.SmlStream` → Meter.

Like the DSMR source (whose shape this follows): Twisted's ``ClientService``
(:mod:`meteremu.reconnect`; the serial port is an endpoint too,
:mod:`meteremu.serialendpoint`) keeps the connection up, backing off from
``reconnect_min`` to ``reconnect_max`` with jitter, counted since the last
valid frame. An idle watchdog (``idle_timeout``), re-armed by valid frames
only, reopens a line that brings nothing usable. While disconnected the meter
is down; a damaged frame, noise or a refused value is a soft failure (the
meter goes stale), counted in ``details``. Every valid frame is a new sample
at its arrival (SML frames carry no wall-clock time).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from meteremu.backoff import next_delay
from meteremu.clocks import wall
from meteremu.failures import describe, exception_of
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.meter import Meter
from meteremu.reconnect import Reconnector, protocol_factory
from meteremu.serialendpoint import PortUnavailable, SerialEndpoint, SerialLine
from meteremu.sources.common import StatefulEvents
from meteremu.sources.jsonfields import ValueProblem
from meteremu.sources.sml.options import SmlOptions
from meteremu.sources.smlparse import Rejected, SmlStream, SmlValues
from meteremu.sources.streamlink import StreamWatchdog

WAIT_WHILE_STOPPING = 3600.0


class _SmlProtocol(Protocol):
    def __init__(self, source: SmlSource) -> None:
        self.source = source
        self.frames = 0
        self.dropped = False

    def connectionMade(self) -> None:
        self.source._connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.source._data(self, data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.source._lost(self, reason)


class SmlSource(StreamWatchdog, StatefulEvents, Service):
    """Feeds a Meter from an SML reading head (see the module docstring).

    Events for ``when``: a state, "frame" (a Reading) or "rejected" (a Rejected).
    """

    type_name = "sml"

    def __init__(self, meter: Meter, options: SmlOptions, reactor: IReactor, clock: IReactorTime | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.meter = meter
        self.options = options
        self.reactor: IReactor = reactor
        self.clock = clock if clock is not None else reactor
        self.rng = rng
        self.stream = SmlStream(options.max_power)
        self.idle = options.idle()
        self.state = "stopped"
        self.attempts = 0
        self.connections = 0
        self.proto: _SmlProtocol | None = None
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
            endpoint = SerialEndpoint(reactor, options.serial, SerialLine(options.baudrate, 8, "N", 1))
        self.reconnector = Reconnector(endpoint, protocol_factory(lambda _: _SmlProtocol(self)), clock=self.clock,
                                       reactor=reactor, retry=self._retry_delay, attempting=self._attempting,
                                       failed=self._attempt_failed, name=f"meter {meter.name}: SML {self.where}")
        self.meter.details = {"transport": self.where, "connection": self.state}

    # -- lifecycle -------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.reconnector.start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stop_running("_watchdog")
        return self.reconnector.stop()

    def _counts(self) -> None:
        self.meter.details.update({**self.stream.counts, "discarded_bytes": self.stream.discarded,
                                   "connections": self.connections})

    # -- connecting ----------------------------------------------------------------------------
    def _attempting(self) -> None:
        self.attempts += 1
        self.stream.reset()
        self._set_state("connecting")

    def _attempt_failed(self, failure: Failure) -> None:
        if self._stopping or failure.check(defer.CancelledError):
            return
        exc = exception_of(failure)
        message = str(exc) if isinstance(exc, PortUnavailable) else f"cannot open {self.where}: {describe(exc)}"
        self.meter.report_failure(message, down=True)
        self._say("connection", message)

    def _retry_delay(self) -> float:
        if self._stopping:
            return WAIT_WHILE_STOPPING
        self._set_state("disconnected")
        return next_delay(self.attempts, self.options.reconnect_min, self.options.reconnect_max, self.rng)

    def _connected(self, proto: _SmlProtocol) -> None:
        if self._stopping:
            self._drop(proto)
            return
        self.proto = proto
        self.connections += 1
        self._say("connection", f"connected to {self.where}", "info")
        self._arm_watchdog(proto)
        self._counts()
        self._set_state("connected")

    def _idle(self, proto: _SmlProtocol) -> None:
        self._watchdog = None
        if proto is not self.proto or self._stopping:
            return
        message = f"no valid SML frame from {self.where} for {self.idle:g} s"
        self.meter.report_failure(message, down=True)
        self._say("connection", message)
        self._drop(proto)

    def _lost(self, proto: _SmlProtocol, reason: Failure | None) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        self._cancel_timers("_watchdog")
        if self._stopping:
            return
        if not proto.dropped:
            why = describe(reason) if reason is not None else "closed"
            message = f"SML connection lost ({self.where}): {why}"
            self.meter.report_failure(message, down=True)
            self._say("connection", message)

    # -- frames -----------------------------------------------------------------------------------
    def _data(self, proto: _SmlProtocol, data: bytes) -> None:
        if proto is not self.proto or self._stopping:
            return
        for result in self.stream.feed(data):
            if isinstance(result, SmlValues):
                self._frame(proto, result)
            else:
                self._rejected(result)
            if self.proto is not proto:
                return
        self._counts()

    def _frame(self, proto: _SmlProtocol, values: SmlValues) -> None:
        try:
            reading = values.reading(wall(self.clock), self.options.invert)
        except ValueProblem as exc:
            self._rejected(Rejected("values", str(exc)))
            return
        proto.frames += 1
        self.attempts = 0
        self._said.pop("connection", None)
        self._said.pop("rejected", None)
        self._arm_watchdog(proto)
        if values.meter_id:
            self.meter.details["meter_id"] = values.meter_id
        self.meter.update(reading)
        self._emit("frame", reading)

    def _rejected(self, result: Rejected) -> None:
        self.meter.report_failure(f"SML frame refused: {result.detail}", down=False)
        self._say("rejected", f"SML frame refused ({result.reason}): {result.detail}")
        self._emit("rejected", result)
