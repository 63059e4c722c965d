"""A raw TCP client for attack tests: bytes out, bytes in, ``closed`` when the server closes."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.trial.unittest import TestCase

SMALL_BUFFER = 8192  # kernel socket buffers shrunk, so a backlog shows up in user space


class RawClient(Protocol):
    """Records what it receives; ``closed`` fires when the connection goes."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        if not self.closed.called:
            self.closed.callback(None)

    def stop_reading(self) -> None:
        """Read nothing more, with a small receive buffer: the server's answers pile up on its side."""
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        self.transport.pauseProducing()


@inlineCallbacks
def connect(case: TestCase, port: int, host: str = "127.0.0.1") -> Any:
    """A connected :class:`RawClient`, aborted at test cleanup if still open."""
    client = RawClient()
    yield ClientCreator(reactor, lambda: client).connectTCP(host, port)
    case.addCleanup(lambda: client.transport.abortConnection() if not client.closed.called else None)
    return client


def modbus_read(tid: int, address: int = 1000, count: int = 80, unit: int = 1) -> bytes:
    """A Modbus TCP FC 0x04 request (read input registers)."""
    return struct.pack(">HHHBBHH", tid & 0xFFFF, 0, 6, unit, 0x04, address, count)


UPGRADE = (b"GET /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def masked(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One client WebSocket frame (clients must mask), payload below 126 bytes."""
    mask = os.urandom(4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + data
