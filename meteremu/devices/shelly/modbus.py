"""Modbus TCP for the emulated Pro 3EM: a Twisted protocol around the register map.

Approach B of specs/twisted.md §2.3: pymodbus is used as the PDU codec
(``DecodePDU``, ``ExceptionResponse``, ``FramerSocket.buildFrame`` and the
request's ``datastore_update``) inside a plain Twisted ``Protocol``, instead
of running pymodbus' own asyncio server (approach A). Why:

* a busy port fails at once through ``listenTCP``, and :attr:`ready` says
  which port and why; pymodbus' server only logs and leaves a RuntimeError;
* live values are computed from :class:`RegisterMap` for each request, with
  the client's address in the :class:`CallContext` (request-side scaling and
  client tracking work as on the other transports); the SimDevice action hook
  sees neither the client nor the unit id;
* the unit id is filtered here: pymodbus' SimCore turns an unknown id into a
  KeyError, logged as an error and answered 0x04;
* no deprecated pymodbus API (ModbusServerContext warns at start), and the
  protocol runs on any reactor (tests drive it with ``StringTransport``).

Connections (issue #22, item 6): each counts against the shared caps of
:mod:`meteremu.connections` (the Modbus cap evicts the oldest connection
that has not completed a request, 1,050 silent connections once blocked every
transport for 70 s); a first request must come within ``header_timeout`` and
the next within ``idle_timeout`` of the last; TCP keep-alive finds vanished
peers. A client that sends requests and does not read the answers is not
read from either (the protocol is the transport's streaming producer: when
the send buffer is full, reading pauses and the requests already received
wait), and is dropped after ``idle_timeout`` of that. At most
``FRAMES_PER_TURN`` requests of one connection are answered per reactor
turn, so a read full of requests does not hold up the other transports.

The MBAP header is checked here rather than by ``FramerSocket.decode``, which
waits forever on a frame with a wrong protocol id; such garbage closes the
connection. Requests are answered in order, each with its own transaction id.

Choices where the real device is not documented (specs/shelly.md §4):

* **FC 0x04** (read input registers) serves the map. **FC 0x03** (holding)
  answers 0x01 *illegal function* by default: users report that holding reads
  fail on the real Shelly Pro EM (tomquist/AstraMeter#172), and a client that
  works with the emulator should work with the device. ``holding_registers=True``
  serves the same map on FC 0x03 instead, as some emulators do.
* Every other function code (writes, coils, diagnostics) answers 0x01.
* A request for **another unit id** answers 0x0B *gateway target device failed
  to respond* (pymodbus' own server default): a scanner learns at once that
  nothing is there, instead of waiting for a timeout, and the emulator is not
  found again under every unit id.
"""

from __future__ import annotations

import struct
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from meteremu.compat.tcp import release_buffers
from meteremu.connections import (
    MODBUS,
    ConnectionLimits,
    ConnectionRegistry,
    Tracked,
    keepalive,
    peer_ip,
)
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.modbus_map import (
    GATEWAY_NO_RESPONSE,
    ILLEGAL_FUNCTION,
    ILLEGAL_VALUE,
    MAX_READ_COUNT,
    ModbusError,
    RegisterMap,
)
from meteremu.devices.shelly.rpc import CallContext
from meteremu.listeners import Listener, StartupError, bind_reason, where

log = Logger(namespace="meteremu.modbus")

READ_HOLDING = 0x03
READ_INPUT = 0x04
MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
READ_PDU = struct.Struct(">BHH")  # function code, start address, register count
FRAMES_PER_TURN = 8  # requests answered per reactor turn from one connection (about 50 µs each)
MAX_MBAP_LENGTH = 254  # unit id + PDU (at most 253 bytes), so an ADU is at most 260 bytes


class ModbusBindError(StartupError):
    """The Modbus TCP server could not listen; the message says where and why."""


def bind_error_message(host: str, port: int, error: BaseException) -> str:
    """A message an operator can act on, naming the port."""
    reason = bind_reason(port, error)
    if reason.startswith(f"port {port} is already in use"):
        reason += " (another Modbus server?); free it or set modbus_port"
    return f"Modbus TCP: cannot listen on {where(host, port)}: {reason}"


class _RegisterStore:
    """The datastore duck type that pymodbus' ``datastore_update`` calls.

    Only reads of the served function codes reach it. It never awaits, so the
    coroutine finishes synchronously and answers stay in request order.
    """

    def __init__(self, regmap: RegisterMap, ctx: CallContext) -> None:
        self.regmap = regmap
        self.ctx = ctx

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | ExcCodes:
        try:
            return self.regmap.read(address, count, self.ctx)
        except ModbusError as err:
            log.debug("FC{fc} {address}+{count} from {peer}: exception {code} ({why})",
                      fc=func_code, address=address, count=count, peer=self.ctx.peer,
                      code=err.code, why=err.message)
            return ExcCodes(err.code)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: list[int] | list[bool]) -> ExcCodes:
        return ExcCodes.ILLEGAL_FUNCTION  # never reached: writes are refused before decoding


class ModbusTcpProtocol(Protocol):
    """One client connection: MBAP frames in, responses or exceptions out.

    It is the transport's streaming producer: ``pauseProducing`` (the send
    buffer is full) stops reading and answering until ``resumeProducing``.
    """

    transport: Any  # a TCP transport (ITCPTransport and a producer's consumer), set by makeConnection

    def __init__(self, shared: ModbusTcpFactory, tracked: Tracked | None = None) -> None:
        self.shared = shared
        self.tracked = tracked
        self._buffer = b""
        self._store: _RegisterStore | None = None
        self._paused = False  # the send buffer is full
        self._yielding = False  # waiting for the next reactor turn to answer more
        self._deadline: IDelayedCall | None = None
        self.dropped_reason: str | None = None
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        host = self.transport.getHost()
        ctx = CallContext(transport="modbus", peer=getattr(peer, "host", None),
                          local_ip=getattr(host, "host", None))
        self._store = _RegisterStore(self.shared.regmap, ctx)
        self.shared.connections.add(self)
        keepalive(self.transport)
        if self.tracked is not None:
            self.tracked.attach(self)
        self.transport.registerProducer(self, True)
        self._arm(self.shared.limits.header_timeout, "no request")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        self.shared.connections.discard(self)
        if self.tracked is not None:
            self.tracked.release()
        self._buffer = b""
        release_buffers(self.transport)  # unsent answers go now, not at the next full GC
        self.closed.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._process()

    def _process(self) -> None:
        answered = 0
        while len(self._buffer) >= MBAP.size and not self._paused and not self._yielding:
            if answered >= FRAMES_PER_TURN and self.shared.clock is not None:
                # Let the reactor turn: a read holds up to 5,000 requests, and
                # every other client would wait for all of them.
                self._yielding = True
                self.transport.pauseProducing()
                self.shared.clock.callLater(0, self._next_turn)
                return
            answered += 1
            tid, protocol_id, length, unit = MBAP.unpack_from(self._buffer)
            if protocol_id != 0 or not 2 <= length <= MAX_MBAP_LENGTH:
                log.info("Modbus TCP: closing connection from {peer}: not Modbus TCP "
                         "(protocol id {pid}, length {length})",
                         peer=self._store.ctx.peer if self._store else None,
                         pid=protocol_id, length=length)
                self._buffer = b""
                self.transport.loseConnection()
                return
            end = 6 + length
            if len(self._buffer) < end:
                return
            pdu, self._buffer = self._buffer[MBAP.size:end], self._buffer[end:]
            self._answer(tid, unit, pdu)
            if self.tracked is not None:
                self.tracked.mark_served()
            if not self._paused:
                self._arm(self.shared.limits.idle_timeout, "idle")

    def _next_turn(self) -> None:
        self._yielding = False
        if not self._paused and self.transport is not None and self.transport.connected:
            self.transport.resumeProducing()
            self._process()

    # -- IPushProducer: the transport's send buffer is full / has drained -----------------
    def pauseProducing(self) -> None:
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()  # stop reading: requests wait in the kernel
            self._arm(self.shared.limits.idle_timeout, "does not read its answers")

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._arm(self.shared.limits.idle_timeout, "idle")
            if not self._yielding:
                self.transport.resumeProducing()
                self._process()

    def stopProducing(self) -> None:
        self._disarm()

    # -- deadlines ---------------------------------------------------------------------------
    def _arm(self, delay: float, why: str) -> None:
        clock = self.shared.clock
        if clock is None:  # no clock, no deadlines (a StringTransport in unit tests)
            return
        self._disarm()
        self._deadline = clock.callLater(delay, self._expired, why)

    def _disarm(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _expired(self, why: str) -> None:
        self._deadline = None
        self.dropped_reason = why
        self.shared.warn(why, "Modbus TCP: closing connections: {why} (e.g. {peer})", why=why,
                         peer=self._store.ctx.peer if self._store else None)
        self.transport.abortConnection()

    def _answer(self, tid: int, unit: int, pdu: bytes) -> None:
        function_code = pdu[0]
        if unit != self.shared.unit_id:
            self._send(tid, unit, ExceptionResponse(function_code, GATEWAY_NO_RESPONSE))
            return
        if function_code not in self.shared.function_codes:
            self._send(tid, unit, ExceptionResponse(function_code, ILLEGAL_FUNCTION))
            return
        # Checked here, so that pymodbus' decoder (which would log a warning) only
        # sees well-formed reads: 2 bytes address, 2 bytes count in 1..125.
        if len(pdu) != READ_PDU.size or not 1 <= READ_PDU.unpack(pdu)[2] <= MAX_READ_COUNT:
            self._send(tid, unit, ExceptionResponse(function_code, ILLEGAL_VALUE))
            return
        request = self.shared.decoder.decode(pdu)
        if request is None:  # not expected after the check above
            self._send(tid, unit, ExceptionResponse(function_code, ILLEGAL_VALUE))
            return
        assert self._store is not None
        # pymodbus types its datastore as ModbusServerContext; _RegisterStore is the duck type.
        store: Any = self._store
        d = defer.Deferred.fromCoroutine(request.datastore_update(store, unit))
        d.addCallback(lambda response: self._send(tid, unit, response))
        d.addErrback(self._failed, tid, unit, function_code)

    def _failed(self, failure: Failure, tid: int, unit: int, function_code: int) -> None:
        """A bug in the map must not drop the connection: log it, answer 0x04."""
        log.failure("Modbus TCP: request FC{fc} failed", failure, fc=function_code)
        self._send(tid, unit, ExceptionResponse(function_code, ExcCodes.DEVICE_FAILURE))

    def _send(self, tid: int, unit: int, response: ModbusPDU) -> None:
        response.transaction_id = tid
        response.dev_id = unit
        self.transport.write(self.shared.framer.buildFrame(response))


class ModbusTcpFactory(ServerFactory):
    """Shared state of all connections: the map, the codec, the open connections."""

    def buildProtocol(self, addr: IAddress | None) -> ModbusTcpProtocol | None:
        """A protocol, unless the connection caps refuse this connection (None: closed at once)."""
        tracked = None
        if self.registry is not None:
            tracked = self.registry.admit(peer_ip(addr), MODBUS)
            if tracked is None:
                return None
        return ModbusTcpProtocol(self, tracked)

    def __init__(self, regmap: RegisterMap, unit_id: int = 1, holding_registers: bool = False, *,
                 registry: ConnectionRegistry | None = None, clock: IReactorTime | None = None) -> None:
        self.registry = registry
        self.limits = registry.limits if registry is not None else ConnectionLimits()
        self.clock = clock
        self.regmap = regmap
        self.unit_id = unit_id
        self.function_codes = frozenset({READ_INPUT, READ_HOLDING} if holding_registers else {READ_INPUT})
        self.decoder = DecodePDU(True)
        self.framer = FramerSocket(self.decoder)
        self.connections: set[ModbusTcpProtocol] = set()

    def warn(self, kind: str, format: str, **fields: Any) -> None:
        """A rate-limited warning (an attacker decides how often these happen)."""
        if self.registry is not None:
            self.registry.warnings.warn(f"modbus-{kind}", format, **fields)


class ModbusService(Listener):
    """The Modbus TCP server of one emulated Pro 3EM.

    It binds in ``privilegedStartService`` like every listener (port 502 with
    ``twistd --uid``); a port that cannot be bound raises
    :class:`ModbusBindError` naming the port and the cause (in use,
    permission denied), and ``ready`` fails with it. ``stopService`` stops
    listening, closes open connections and returns a Deferred that fires
    when all are gone.
    """

    def __init__(self, device: ShellyDevice, host: str, port: int, unit_id: int = 1,
                 reactor: IReactorTCP | None = None, *, holding_registers: bool = False,
                 connections: ConnectionRegistry | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.device = device
        self.host = host
        self.unit_id = unit_id
        self.reactor = reactor
        clock: Any = reactor  # listenTCP and callLater: every real reactor has both
        self.factory = ModbusTcpFactory(RegisterMap(device), unit_id, holding_registers,
                                        registry=connections, clock=clock)
        super().__init__(lambda port, interface: reactor.listenTCP(port, self.factory, interface=interface),
                         port, host,
                         "Modbus TCP", describe_error=bind_error_message, error_type=ModbusBindError)

    def privilegedStartService(self) -> None:
        bound = self.listening is not None
        super().privilegedStartService()
        if not bound:
            log.info("Modbus TCP listening on {host}:{port}, unit id {unit}",
                     host=self.host or "*", port=self.port, unit=self.unit_id)

    def stopService(self) -> defer.Deferred[Any]:
        waits: list[defer.Deferred[Any]] = [defer.maybeDeferred(super().stopService)]
        for connection in list(self.factory.connections):
            waits.append(connection.closed)
            # abort: a client that does not read would keep a graceful close waiting
            connection.transport.abortConnection()
        return defer.gatherResults(waits, consumeErrors=True)
