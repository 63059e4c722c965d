"""Every port meteremu listens on is bound here, in ``privilegedStartService``.

twistd calls ``privilegedStartService`` on the whole tree before it drops
root (``--uid``/``--gid``), and ``startService`` after: so binding in the
privileged step is what lets a Modbus server on 502, an HTTP face on 80 or
a Marstek UDP port 1010 run as an unprivileged user. One path for TCP and
UDP also gives every transport the same failure: a port that cannot be bound
raises :class:`StartupError` with a message an operator can act on (which
address, in use or no permission), and the process stops with that one line
(:class:`StartupGuard`) instead of limping on without the port.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort

from meteremu.logs import logger

log = logger(__name__)


class StartupError(Exception):
    """A part could not start (port taken, bad certificate…): stop the process."""


def where(host: str, port: int) -> str:
    """``127.0.0.1:80``, ``[::1]:80``, or ``port 80 (all interfaces)``."""
    if not host:
        return f"port {port} (all interfaces)"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_reason(port: int, error: BaseException) -> str:
    """Why a bind failed, in words that say what to do about it."""
    socket_error = getattr(error, "socketError", error)
    code = getattr(socket_error, "errno", None)
    if code == errno.EADDRINUSE:
        return f"port {port} is already in use"
    if code == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    return str(socket_error)


def listen_error(what: str, host: str, port: int, error: BaseException) -> str:
    """The message of a port that could not be bound: ``cannot listen for HTTP on …: …``."""
    return f"cannot listen for {what} on {host or '*'}:{port}: {bind_reason(port, error)}"


class Listen(Protocol):
    """``reactor.listenTCP``/``listenUDP`` with everything but the address bound."""

    def __call__(self, port: int, interface: str) -> IListeningPort: ...


class Listener(Service):
    """A port bound in ``privilegedStartService``, that knows its real port.

    ``describe_error(host, port, error)`` makes the message of a failed bind
    (``error_type`` is raised with it); the default names ``what``. ``ready``
    gives a new Deferred per call, firing with the bound port (the real one
    when 0 was asked for) or failing with the start-up error: nobody is left
    with an unhandled failure when the process stops at the error anyway.
    """

    def __init__(self, listen: Listen, port: int, interface: str, what: str, *,
                 describe_error: Callable[[str, int, BaseException], str] | None = None,
                 error_type: type[StartupError] = StartupError) -> None:
        self.listen, self.requested, self.interface, self.what = listen, port, interface, what
        self.describe_error = describe_error or (lambda host, port, error: listen_error(what, host, port, error))
        self.error_type = error_type
        self.listening: IListeningPort | None = None
        self._error: StartupError | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.listening is not None:
            return
        try:
            self.listening = self.listen(self.requested, interface=self.interface)
        except CannotListenError as exc:
            self._error = self.error_type(self.describe_error(self.interface, self.requested, exc))
            raise self._error from None
        self._error = None

    def startService(self) -> None:
        if self.listening is None:
            self.privilegedStartService()
        super().startService()

    @property
    def ready(self) -> Deferred[int]:
        if self.listening is not None:
            return succeed(self.port)
        if self._error is not None:
            return fail(self._error)
        return Deferred()  # not started yet: callers wait on the tree's own start

    @property
    def port(self) -> int:
        assert self.listening is not None, f"{self.what} is not listening"
        port: int = self.listening.getHost().port
        return port

    @property
    def protocol(self) -> Any:
        """The protocol of a UDP port (what ``listenUDP`` was given)."""
        return getattr(self.listening, "protocol", None)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        listening, self.listening = self.listening, None
        if listening is not None:
            result: Deferred[None] | None = listening.stopListening()
            return result
        return None


def tcp_listener(reactor: Any, port: int, factory: Any, interface: str, what: str,
                 **kwargs: Any) -> Listener:
    return Listener(lambda port, interface: reactor.listenTCP(port, factory, interface=interface),
                    port, interface, what, **kwargs)


def udp_listener(reactor: Any, port: int, protocol: Any, interface: str, what: str = "UDP RPC") -> Listener:
    return Listener(lambda port, interface: reactor.listenUDP(port, protocol, interface=interface),
                    port, interface, what)


class StartupGuard(MultiService):
    """The root of the tree: a :class:`StartupError` while binding ends the process in one line.

    twistd would print a traceback and, worse, carry on starting the rest;
    an operator needs the one line saying which port, and a non-zero status
    for systemd to act on.
    """

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as exc:
            log.critical("{text}", text=str(exc))
            sys.stderr.write(f"meteremu: {exc}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None
