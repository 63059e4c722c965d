"""Helpers for the P1 / KMP source tests: fixtures, timestamp rewriting, a TCP
telegram server, a pseudo-terminal pair and the source registry entries."""

from __future__ import annotations

import fcntl
import os
import re
import termios
import tty
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from meteremu import sources
from meteremu.sources.dsmr.parse import crc16, split_crc
from tests.support import FIXTURES

NEW_SOURCES = {
    "dsmr": "meteremu.sources.dsmr",
    "homewizard": "meteremu.sources.homewizard",
    "kamstrup": "meteremu.sources.kamstrup",
}


def register_sources(case: TestCase) -> None:
    """Make sure the registry knows the new source types (until the lead adds them)."""
    for kind, module in NEW_SOURCES.items():
        if kind not in sources.SOURCE_MODULES:
            sources.SOURCE_MODULES[kind] = module
            case.addCleanup(sources.SOURCE_MODULES.pop, kind, None)


def dsmr_fixture(name: str) -> bytes:
    with open(os.path.join(FIXTURES, "dsmr", name), "rb") as handle:
        return handle.read()


DSMR_FIXTURES = sorted(n for n in os.listdir(os.path.join(FIXTURES, "dsmr")) if n.endswith(".txt"))

_AMSTERDAM = ZoneInfo("Europe/Amsterdam")
_STAMP = re.compile(rb"^(0-0:1\.0\.0\()(\d{12})([SW])\)", re.MULTILINE)


def dsmr_stamp(epoch: float) -> bytes:
    """``YYMMDDhhmmssX`` for ``epoch`` as a Dutch meter writes it (S = summer time)."""
    local = datetime.fromtimestamp(int(epoch), _AMSTERDAM)
    flag = b"S" if local.dst() else b"W"
    return local.strftime("%y%m%d%H%M%S").encode() + flag


def retime(telegram: bytes, epoch: float) -> bytes:
    """The telegram with its ``0-0:1.0.0`` set to ``epoch`` and its CRC recomputed.

    Telegrams without a timestamp (DSMR 2.2/3, Q3D) come back unchanged.
    """
    new, count = _STAMP.subn(lambda m: m.group(1) + dsmr_stamp(epoch) + b")", telegram, count=1)
    if not count:
        return telegram
    body, crc = split_crc(new)
    if crc is None:
        return new
    return body + f"{crc16(body):04X}".encode() + _tail_after_crc(new, body)


def _tail_after_crc(telegram: bytes, body: bytes) -> bytes:
    rest = telegram[len(body):]
    match = re.match(rb"[0-9A-F]{0,4}", rest)
    assert match is not None
    return rest[match.end():]


def has_timestamp(telegram: bytes) -> bool:
    return _STAMP.search(telegram) is not None


# -- a TCP server that streams telegrams (a ser2net stand-in) --------------------------


class _Stream(Protocol):
    def connectionMade(self) -> None:
        self.factory.server._made(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.server._lost(self)


class P1Server:
    """Listens on 127.0.0.1:0; the test pushes bytes to the connected client."""

    def __init__(self, case: TestCase) -> None:
        factory = Factory.forProtocol(_Stream)
        factory.noisy = False
        factory.server = self  # type: ignore[attr-defined]
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        case.addCleanup(self.close)
        self.clients: list[_Stream] = []
        self.connections = 0
        self._connected: list[Deferred[_Stream]] = []
        self._lost_waiters: list[Deferred[None]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    def _made(self, proto: _Stream) -> None:
        self.clients.append(proto)
        self.connections += 1
        waiting, self._connected = self._connected, []
        for d in waiting:
            d.callback(proto)

    def _lost(self, proto: _Stream) -> None:
        if proto in self.clients:
            self.clients.remove(proto)
        waiting, self._lost_waiters = self._lost_waiters, []
        for d in waiting:
            d.callback(None)

    def connected(self) -> Deferred[_Stream]:
        """The current client, or the next one to connect."""
        d: Deferred[_Stream] = Deferred()
        if self.clients:
            d.callback(self.clients[-1])
        else:
            self._connected.append(d)
        return d

    def next_connection(self) -> Deferred[_Stream]:
        d: Deferred[_Stream] = Deferred()
        self._connected.append(d)
        return d

    def disconnected(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if not self.clients:
            d.callback(None)
        else:
            self._lost_waiters.append(d)
        return d

    def send(self, data: bytes) -> None:
        for client in self.clients:
            client.transport.write(data)

    def drop(self) -> None:
        for client in list(self.clients):
            client.transport.abortConnection()

    def close(self) -> Deferred[Any]:
        self.drop()
        return self.port.stopListening()


# -- a pseudo-terminal pair --------------------------------------------------------------


class PtyMaster(FileDescriptor):
    """The device side of a pty: what it writes, the source reads from the slave.

    The test keeps its own descriptor of the slave open, so the terminal never
    hangs up while the source closes and reopens the port; ``baudrate()`` reads
    the line settings the source set on the slave (real termios, no mock).
    """

    def __init__(self, case: TestCase, on_data: Any = None) -> None:
        super().__init__(reactor)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        flags = fcntl.fcntl(self.master, fcntl.F_GETFL)
        fcntl.fcntl(self.master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self.on_data = on_data
        self.received = bytearray()
        self.connected = 1
        self.startReading()
        case.addCleanup(self.close)

    def fileno(self) -> int:
        return self.master

    def doRead(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return None
        self.received += data
        if self.on_data is not None:
            self.on_data(data)
        return None

    def writeSomeData(self, data: bytes) -> int:
        try:
            return os.write(self.master, data)
        except BlockingIOError:
            return 0

    def baudrate(self) -> int:
        """The speed the source set on the port, as a plain number (e.g. 9600)."""
        speed = termios.tcgetattr(self.slave)[4]
        for name in dir(termios):
            if name.startswith("B") and name[1:].isdigit() and getattr(termios, name) == speed:
                return int(name[1:])
        return -1

    def close(self) -> None:
        self.stopReading()
        self.stopWriting()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def encrypt_telegram(plain: bytes, key: bytes, authentication_key: bytes, counter: int = 1,
                     system_title: bytes = b"SAG\x01\x02\x03\x04\x05") -> bytes:
    """A DLMS general-global-cipher frame as an Austrian or Luxembourg meter sends it."""
    from dlms_cosem.security import SecurityControlField, encrypt

    control = SecurityControlField(security_suite=0, authenticated=True, encrypted=True)
    ciphered = encrypt(control, system_title, counter, key, plain, authentication_key)
    content = control.to_bytes() + counter.to_bytes(4, "big") + ciphered
    return bytes((0xDB, len(system_title))) + system_title + b"\x82" + len(content).to_bytes(2, "big") + content
