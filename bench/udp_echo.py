"""The UDP ceiling: a bare Twisted DatagramProtocol echo on the asyncio reactor.

Same reactor and interpreter as meteremu, nothing else: each datagram goes
straight back to its sender. ``python bench/udp_echo.py PORT`` prints
``echo serving on UDP port N`` once listening, then runs until SIGTERM.
"""

from __future__ import annotations

import sys

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.protocol import DatagramProtocol  # noqa: E402


class Echo(DatagramProtocol):
    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.write(data, addr)


def main() -> None:
    port = reactor.listenUDP(int(sys.argv[1]), Echo(), interface="127.0.0.1")
    print(f"echo serving on UDP port {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
