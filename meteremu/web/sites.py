"""The HTTP ports: one Klein app per port, shared by whoever serves on it.

The main port (``server.http_port``) carries the operations routes and the
dashboard; a device adds its routes to the main app or to one on its own
port (``http_port``), and may put its app on more ports
(``websocket_ports``). Devices ask for apps here and never bind: the
listeners are made once every route is known (:meth:`Sites.listeners`), and
bound with everything else in ``privilegedStartService``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTCP
from twisted.web.server import Site

from meteremu.compat.http_server import (
    DEFAULT_LIMIT,
    BodyLimit,
    BoundedChannel,
    Refusal,
    bounded,
    plain_refusal,
)
from meteremu.connections import HTTP, ConnectionLimits, ConnectionRegistry, peer_ip
from meteremu.listeners import Listener, StartupError, tcp_listener


class QuietSite(Site):
    """A Site without per-request access logs, whose request bodies are bounded.

    Batteries poll about once a second, forever: an access log line per poll
    would drown everything else in the journal (and wear a Pi's SD card).
    Requests are counted in /metrics instead. ``body_limit(path)`` is the
    largest body a path accepts (``meteremu.compat.http_server``).
    """

    noisy = False
    # Twisted's default wraps HTTPChannel to negotiate HTTP/2 over TLS, which meteremu does not serve.
    protocol = BoundedChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, body_limit: BodyLimit | None = None,
                 connections: ConnectionRegistry | None = None) -> None:
        # timeout=None: Twisted's own idle timeout (12 h, reset by every byte)
        # is replaced by the channel's deadlines (meteremu.compat.http_server).
        super().__init__(resource, requestFactory=bounded(body_limit or (lambda path: (DEFAULT_LIMIT, plain_refusal))),
                         timeout=None)
        self.connections = connections
        self.limits = connections.limits if connections is not None else ConnectionLimits()

    def buildProtocol(self, addr: Any) -> Any:
        """A channel, unless the connection caps refuse this one (then the socket is closed)."""
        tracked = None
        if self.connections is not None:
            tracked = self.connections.admit(peer_ip(addr), HTTP)
            if tracked is None:
                return None
        channel = super().buildProtocol(addr)
        channel.tracked = tracked
        channel.limits = self.limits
        channel.warnings = self.connections.warnings if self.connections is not None else None
        return channel

    def log(self, request: Any) -> None:
        pass


class Sites:
    """Klein apps by port, and after :meth:`listeners` their listeners."""

    def __init__(self, main_port: int, connections: ConnectionRegistry | None = None) -> None:
        self.main_port = main_port
        self.connections = connections  # the caps every HTTP port shares (with Modbus)
        self.main = Klein()
        self.apps: dict[int, Klein] = {main_port: self.main}
        self.bound: dict[int, Listener] = {}
        self._bodies: dict[int, list[tuple[bytes, int, Refusal]]] = {}

    def app(self, port: int | None) -> Klein:
        """The app serving ``port`` (the main one for ``None``), made on first use."""
        return self.apps.setdefault(self.main_port if port is None else port, Klein())

    def accept_bodies(self, port: int | None, prefix: bytes, limit: int,
                      refusal: Refusal = plain_refusal) -> None:
        """Requests to paths under ``prefix`` on ``port`` may carry bodies up to ``limit`` bytes.

        Larger ones (and any body on an upgrade request) are refused before
        they are read, with the JSON ``refusal`` gives (the route's own error shape).
        """
        self._bodies.setdefault(self.main_port if port is None else port, []).append((prefix, limit, refusal))

    def body_limit(self, port: int) -> BodyLimit:
        """The body limit of each path on ``port`` (the longest matching prefix wins)."""
        rules = sorted(self._bodies.get(port, []), key=lambda rule: -len(rule[0]))

        def limit(path: bytes) -> tuple[int, Refusal]:
            for prefix, size, refusal in rules:
                if path == prefix or path.startswith(prefix.rstrip(b"/") + b"/"):
                    return size, refusal
            return DEFAULT_LIMIT, plain_refusal

        return limit

    def share(self, port: int, app: Klein, owner: str) -> None:
        """Serve ``app`` on ``port`` too; a port serves one app only."""
        if port in self.apps and self.apps[port] is not app:
            raise StartupError(f"{owner}: port {port} already serves another device")
        self.apps[port] = app

    def listeners(self, reactor: IReactorTCP, host: str,
                  wrap: Callable[[Any], Any] | None = None) -> dict[int, Listener]:
        """A listener per port (``wrap`` decorates each root resource, e.g. CORS)."""
        for port, app in self.apps.items():
            root = app.resource() if wrap is None else wrap(app.resource())
            site = QuietSite(root, self.body_limit(port), self.connections)
            self.bound[port] = tcp_listener(reactor, port, site, host, "HTTP")
        return self.bound

    def real_port(self, port: int | None) -> Callable[[], int]:
        """The port ``port`` really listens on, to be asked once listening (0 = any)."""
        key = self.main_port if port is None else port
        return lambda: self.bound[key].port
