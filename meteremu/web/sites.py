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

from meteremu.listeners import Listener, StartupError, tcp_listener


class QuietSite(Site):
    """A Site without per-request access logs.

    Batteries poll about once a second, forever: an access log line per poll
    would drown everything else in the journal (and wear a Pi's SD card).
    Requests are counted in /metrics instead.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


class Sites:
    """Klein apps by port, and after :meth:`listeners` their listeners."""

    def __init__(self, main_port: int) -> None:
        self.main_port = main_port
        self.main = Klein()
        self.apps: dict[int, Klein] = {main_port: self.main}
        self.bound: dict[int, Listener] = {}

    def app(self, port: int | None) -> Klein:
        """The app serving ``port`` (the main one for ``None``), made on first use."""
        return self.apps.setdefault(self.main_port if port is None else port, Klein())

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
            self.bound[port] = tcp_listener(reactor, port, QuietSite(root), host, "HTTP")
        return self.bound

    def real_port(self, port: int | None) -> Callable[[], int]:
        """The port ``port`` really listens on, to be asked once listening (0 = any)."""
        key = self.main_port if port is None else port
        return lambda: self.bound[key].port
