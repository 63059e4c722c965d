"""Every accepted TCP connection (HTTP, WebSocket, Modbus), counted against the caps.

One attacker on the LAN could hold every file descriptor the process has
(slowloris: 1,024 half-sent requests; 1,050 silent Modbus connections) and
no battery could connect any more. The :class:`ConnectionRegistry` is asked
before a connection gets a protocol (``buildProtocol``), and decides:

* **per address**: past ``max_per_ip`` connections from one IP address, a
  new one is refused (closed at once). A battery needs one or two; a
  browser six.
* **in all** (``max_connections``) and **for Modbus** (``max_modbus``): at
  the cap, the oldest connection that has not yet completed a request is
  evicted to make room. A client that gets its answers is never pushed out
  by one that only holds a socket; a flood of silent connections pushes out
  only its own. With no such connection to evict, the new one is refused.

Deadlines (``header_timeout``, ``idle_timeout``) and TCP keep-alive are
applied by the transports themselves (``meteremu.compat.http_server``,
``meteremu.devices.shelly.modbus``); the numbers live here, in
:class:`ConnectionLimits`. The registry is pure bookkeeping: it closes a
connection only through the callable it was given, and refusals and
evictions are logged through :class:`~meteremu.ratelog.RateLimitedLog` (an
attacker controls how often they happen).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from meteremu.interfaces import IReactorTime
from meteremu.ratelog import RateLimitedLog

HTTP = "http"
MODBUS = "modbus"

# TCP keep-alive: a peer that vanished (battery unplugged, Wi-Fi gone) is
# found after KEEPIDLE + KEEPCNT * KEEPINTVL seconds instead of the kernel's
# two hours and more.
KEEPIDLE = 60
KEEPINTVL = 10
KEEPCNT = 5


@dataclass(frozen=True)
class ConnectionLimits:
    """The caps and deadlines of ``server:`` (see docs/configuration.md)."""

    max_connections: int = 512
    max_per_ip: int = 64
    max_modbus: int = 32
    header_timeout: float = 10.0  # a whole request (head and body) once begun, or the first after connecting
    idle_timeout: float = 60.0  # between two requests, and for a client that does not read its answers


class Tracked:
    """One accepted connection as the registry sees it."""

    __slots__ = ("ip", "kind", "served", "live", "close", "protocol", "registry")

    def __init__(self, registry: ConnectionRegistry, ip: str, kind: str) -> None:
        self.registry, self.ip, self.kind = registry, ip, kind
        self.served = False  # completed at least one request (or upgraded to a WebSocket)
        self.live = True
        self.close: Callable[[], Any] | None = None  # aborts the transport; set once it exists
        self.protocol: Any = None  # the protocol serving it now (HTTP channel, WebSocket, Modbus)

    def attach(self, protocol: Any) -> None:
        """``protocol`` serves the connection now (its transport is connected)."""
        self.protocol = protocol
        self.close = protocol.transport.abortConnection

    def mark_served(self) -> None:
        self.served = True

    def release(self) -> None:
        """The connection is gone (idempotent: an evicted one is released already)."""
        if self.live:
            self.live = False
            self.registry._forget(self)


class ConnectionRegistry:
    """Counts of live connections by address and kind; admits, refuses and evicts."""

    def __init__(self, limits: ConnectionLimits, clock: IReactorTime, log: Logger | None = None) -> None:
        self.limits = limits
        self._all: dict[Tracked, None] = {}  # insertion order = age
        self._by_ip: dict[str, int] = {}
        self._modbus = 0
        self.refused = 0
        self.evicted = 0
        self.warnings = RateLimitedLog(log or Logger(namespace="meteremu.connections"), clock)

    def __len__(self) -> int:
        return len(self._all)

    def count(self, kind: str | None = None, ip: str | None = None) -> int:
        if ip is not None:
            return self._by_ip.get(ip, 0)
        if kind == MODBUS:
            return self._modbus
        if kind is None:
            return len(self._all)
        return sum(1 for entry in self._all if entry.kind == kind)

    def connections(self) -> list[Tracked]:
        return list(self._all)

    def admit(self, ip: str, kind: str) -> Tracked | None:
        """A new connection from ``ip``: its entry, or None when it must be refused."""
        limits = self.limits
        if self._by_ip.get(ip, 0) >= limits.max_per_ip:
            return self._refuse("per_ip", "refusing a {what} connection from {ip}: "
                                "{cap} connections from that address already", ip, kind, limits.max_per_ip)
        if kind == MODBUS and self._modbus >= limits.max_modbus:
            if not self._evict(MODBUS):
                return self._refuse("modbus", "refusing a Modbus TCP connection from {ip}: "
                                    "{cap} already, all of them served", ip, kind, limits.max_modbus)
        if len(self._all) >= limits.max_connections:
            if not self._evict(None):
                return self._refuse("total", "refusing a {what} connection from {ip}: "
                                    "{cap} open, all of them served", ip, kind, limits.max_connections)
        entry = Tracked(self, ip, kind)
        self._all[entry] = None
        self._by_ip[ip] = self._by_ip.get(ip, 0) + 1
        if kind == MODBUS:
            self._modbus += 1
        return entry

    def _refuse(self, why: str, format: str, ip: str, kind: str, cap: int) -> Tracked | None:
        self.refused += 1
        self.warnings.warn(f"refused-{why}", format, ip=ip, what=kind, cap=cap)
        return None

    def _evict(self, kind: str | None) -> bool:
        """Close the oldest connection (of ``kind``) that has not completed a request."""
        for entry in self._all:
            if not entry.served and (kind is None or entry.kind == kind):
                self.evicted += 1
                self.warnings.warn("evicted", "at the connection cap: closing the oldest connection "
                                   "without a completed request ({what} from {ip})", what=entry.kind, ip=entry.ip)
                close = entry.close
                entry.release()
                if close is not None:
                    close()
                return True
        return False

    def _forget(self, entry: Tracked) -> None:
        self._all.pop(entry, None)
        left = self._by_ip.get(entry.ip, 0) - 1
        if left > 0:
            self._by_ip[entry.ip] = left
        else:
            self._by_ip.pop(entry.ip, None)
        if entry.kind == MODBUS:
            self._modbus -= 1


def peer_ip(address: Any) -> str:
    """The IP address of a peer (``"?"`` for transports without one, e.g. UNIX sockets)."""
    return str(getattr(address, "host", "?"))


def keepalive(transport: Any) -> None:
    """TCP keep-alive with short probe times, where the platform has them (Linux does)."""
    set_keepalive = getattr(transport, "setTcpKeepAlive", None)
    if set_keepalive is None:
        return
    set_keepalive(True)
    handle = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(handle, socket.socket):
        return
    for name, value in (("TCP_KEEPIDLE", KEEPIDLE), ("TCP_KEEPINTVL", KEEPINTVL), ("TCP_KEEPCNT", KEEPCNT)):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                handle.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass  # the connection is already closing
