"""A serial port as a Twisted client endpoint.

With it a serial source keeps its line up through
``twisted.application.internet.ClientService`` exactly as a TCP one does
(:mod:`meteremu.reconnect`): "connecting" opens the port with
``twisted.internet.serialport.SerialPort``, a port that cannot be opened (no
such device, settings it refuses) is a failed connection attempt, and closing
it or losing it ends the connection.

The protocol is built with a :class:`SerialAddress` naming the device and
the line settings the port was opened with, so it knows how to read it.

pyserial is imported when a port is opened, never when this module is: a
missing pyserial is a failed attempt with a clear message, like a missing
device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorFDSet,
    IStreamClientEndpoint,
)
from zope.interface import implementer


class Line(Protocol):
    """Serial line settings (DSMR's ``LineSettings`` and :class:`SerialLine` both are)."""

    @property
    def baudrate(self) -> int: ...

    @property
    def bytesize(self) -> int: ...

    @property
    def parity(self) -> str: ...

    @property
    def stopbits(self) -> int: ...


@dataclass(frozen=True)
class SerialLine:
    baudrate: int
    bytesize: int = 8
    parity: str = "N"  # "N", "E", "O"
    stopbits: int = 1

    def __str__(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


@implementer(IAddress)
@dataclass(frozen=True)
class SerialAddress:
    """Where a serial "connection" goes: the device, and the settings it was opened with."""

    device: str
    line: Line


class PortUnavailable(Exception):
    """The serial port cannot be used at all (pyserial missing)."""


@implementer(IStreamClientEndpoint)
class SerialEndpoint:
    """Opens ``device`` with ``line`` (settings, or a callable asked at each attempt)."""

    def __init__(self, reactor: IReactorFDSet, device: str, line: Line | Callable[[], Line]) -> None:
        self.reactor = reactor
        self.device = device
        self.line = line

    def __repr__(self) -> str:
        return f"<serial {self.device}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Open the port (synchronously: pyserial's open does not block); fail if it cannot be."""
        try:
            from twisted.internet.serialport import SerialPort  # needs pyserial
        except ImportError:
            return fail(PortUnavailable("serial: needs pyserial (pip install pyserial)"))
        line = self.line() if callable(self.line) else self.line
        protocol = protocolFactory.buildProtocol(SerialAddress(self.device, line))
        if protocol is None:
            return fail(PortUnavailable("the protocol factory refused the port"))
        try:
            # connectionMade runs in here. pyserial's SerialException is an
            # OSError; a termios.error (settings the port refuses) is not.
            # type: ignore: mypy sees the Windows SerialPort (twisted.internet.serialport picks
            # its class by platform); the POSIX one, used here, takes pyserial's ``timeout``.
            SerialPort(protocol, self.device, self.reactor, baudrate=line.baudrate,  # type: ignore[call-arg]
                       bytesize=line.bytesize, parity=line.parity, stopbits=line.stopbits, timeout=0)
        except Exception as exc:  # noqa: BLE001 - any way the open fails is a failed attempt
            return fail(exc)
        return succeed(protocol)
