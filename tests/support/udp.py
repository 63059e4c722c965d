"""UDP on loopback for tests: free ports, and a battery that asks and waits for the answer."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol


def free_udp_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Battery(DatagramProtocol):
    """A client socket on a chosen 127.0.0.x address; ``ask`` waits for one reply."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[bytes]] = []
        self.received: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)
        if self.waiting:
            self.waiting.pop(0).callback(data)

    def ask(self, data: bytes, port: int, timeout: float = 5.0) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.waiting.append(d)
        self.transport.write(data, ("127.0.0.1", port))
        d.addTimeout(timeout, reactor)
        return d
