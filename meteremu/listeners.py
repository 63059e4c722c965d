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
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.application.service import MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorUDP
from twisted.python.failure import Failure

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
        host = self.listening.getHost()
        assert isinstance(host, IPv4Address | IPv6Address), host
        return host.port

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


def tcp_listener(reactor: IReactorTCP, port: int, factory: Any, interface: str, what: str,
                 **kwargs: Any) -> Listener:
    return Listener(lambda port, interface: reactor.listenTCP(port, factory, interface=interface),
                    port, interface, what, **kwargs)


def udp_listener(reactor: IReactorUDP, port: int, protocol: Any, interface: str, what: str = "UDP RPC",
                 max_packet_size: int = 8192) -> Listener:
    """A UDP port; datagrams longer than ``max_packet_size`` are cut to it by the kernel read."""
    return Listener(lambda port, interface: reactor.listenUDP(port, protocol, interface=interface,
                                                              maxPacketSize=max_packet_size),
                    port, interface, what)


def all_ready(waits: Sequence[Deferred[Any]]) -> Deferred[None]:
    """Fires when every one of ``waits`` has; fails with the first failure itself.

    (A plain ``DeferredList`` would fail with ``FirstError`` wrapping it, and
    the one-line start-up message must name the real cause.)
    """
    if not waits:
        return succeed(None)

    def first(failure: Failure) -> Failure:
        error = failure.value
        return error.subFailure if isinstance(error, FirstError) else failure

    joined = DeferredList(list(waits), fireOnOneErrback=True, consumeErrors=True)
    return joined.addCallbacks(lambda _: None, first)


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
