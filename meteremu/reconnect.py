"""Reconnecting clients on Twisted's ``ClientService``, with the hooks sources need.

``twisted.application.internet.ClientService`` keeps one connection up: it
connects when started, waits after a failed attempt or a lost connection,
tries again, and closes the connection when stopped. Every reconnecting
client in meteremu (DSMR over TCP or serial, Kamstrup, the Home Assistant and
HomeWizard WebSockets, MQTT) runs on one, through :class:`Reconnector`, which
adds what a source needs and ClientService does not say, using only its
public API:

* **The owner decides every wait.** ClientService hands its retry policy its
  own count of failed attempts, which it resets on every successful connect.
  A source's rules are its own: Home Assistant resets its backoff only once a
  subscription succeeded and waits ``reconnect_max`` after a refused token,
  HomeWizard counts failures in a row, DSMR resets on a valid telegram. So the
  policy is the owner's callable, which consults the owner's state (and may
  record that the owner now waits); ClientService calls it right before it
  arms the retry timer. (Twisted's ``backoffPolicy`` is not used as is: its
  jitter is added on top, the first failure already doubles the delay, and
  the count is ClientService's; meteremu's waits are
  :func:`meteremu.backoff.next_delay`.)
* **The owner hears of each attempt and each failed one**: the endpoint is
  wrapped, ``attempting()`` runs before each connect and ``failed(failure)``
  when one fails. A connection that is made reports itself: the owner's
  protocol has ``connectionMade``.
* **The hooks and the policy run inside ClientService's state machine**
  (Automat): they may change the owner's state and its Meter, but must not
  start or stop the service, and whatever lets other code run (firing a
  Deferred someone waits on) waits for the next reactor turn
  (:class:`meteremu.sources.common.SourceEvents` does).
* **Stopping is bounded**: ``stop()`` closes the connection and waits for it;
  one that cannot even flush within :data:`CLOSE_WAIT` is aborted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from meteremu.compat.client_service import QuietClientService

CLOSE_WAIT = 2.0
"""Seconds a closing connection may take to flush before it is aborted."""


def _nothing(*_: Any) -> None:
    return None


# Factory[Any]: the wrapped factory's protocols are any IProtocol, not necessarily the
# Protocol-with-a-factory that Twisted's Factory is typed to build.
class _Recording(Factory[Any]):
    """The owner's factory, quiet, remembering the last protocol it built (``built``)."""

    noisy = False

    def __init__(self, wrapped: IProtocolFactory) -> None:
        self.wrapped = wrapped
        self.built: IProtocol | None = None

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        self.built = self.wrapped.buildProtocol(addr)
        return self.built


@implementer(IStreamClientEndpoint)
class _Watched:
    """The owner's endpoint, telling the owner about every attempt and every failed one."""

    def __init__(self, endpoint: IStreamClientEndpoint, name: str, attempting: Callable[[], None],
                 failed: Callable[[Failure], None]) -> None:
        self.endpoint = endpoint
        self.name = name
        self.attempting = attempting
        self.failed = failed

    def __repr__(self) -> str:  # ClientService's "Scheduling retry N to connect <this>" line
        return self.name

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempting()
        d = self.endpoint.connect(protocolFactory)

        def failed(failure: Failure) -> Failure:
            self.failed(failure)
            return failure

        return d.addErrback(failed)


class Reconnector:
    """One connection to ``endpoint`` kept up by a ``ClientService`` (see the module docstring).

    ``retry()`` → seconds to wait before the next attempt; ``clock`` times the
    waits (tests pass a ``Clock``), ``reactor`` bounds the stop; ``name`` says
    in ClientService's log lines what is connected to.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, factory: IProtocolFactory, *, clock: IReactorTime,
                 reactor: IReactorTime, retry: Callable[[], float], attempting: Callable[[], None] = _nothing,
                 failed: Callable[[Failure], None] = _nothing, name: str | None = None) -> None:
        self.reactor = reactor
        self._stopping: Deferred[None] | None = None
        self._factory = _Recording(factory)
        self.service = QuietClientService(_Watched(endpoint, name or repr(endpoint), attempting, failed), self._factory,
                                     retryPolicy=lambda _failed_attempts: retry(), clock=clock)

    def start(self) -> None:
        self._stopping = None
        self.service.startService()

    def stop(self, closing: Deferred[Any] | None = None) -> Deferred[None]:
        """Stop retrying and close the connection; fires once it is closed.

        ``closing`` fires when the owner's own goodbye is over (a WebSocket
        close handshake): the connection is left to it for up to
        :data:`CLOSE_WAIT` seconds first. The owner's goodbye ends with the
        connection closing, and ``closing`` should fire from the protocol's
        ``connectionLost``: ClientService then hears of the loss when it is
        already stopping, and arms no retry. Calling ``stop`` again while it
        stops waits for the same end.
        """
        if self._stopping is None:
            self._stopping = self._stop(closing)
        return _follow(self._stopping)

    def _stop(self, closing: Deferred[Any] | None) -> Deferred[None]:
        if not self.service.running:
            return succeed(None)
        if closing is None or closing.called:
            return self._stop_service()
        timer = self.reactor.callLater(CLOSE_WAIT, closing.cancel)
        closing.addErrback(lambda _: None)

        def closed(_: Any) -> Deferred[None]:
            if timer.active():
                timer.cancel()
            return self._stop_service()

        return closing.addBoth(closed)

    def _stop_service(self) -> Deferred[None]:
        done = self.service.stopService()
        if done.called:
            return done
        protocol = self._factory.built
        timer = self.reactor.callLater(CLOSE_WAIT, self._abort, protocol)

        def finished(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(finished)

    @staticmethod
    def _abort(protocol: IProtocol | None) -> None:
        transport = getattr(protocol, "transport", None)
        abort = getattr(transport, "abortConnection", None) or getattr(transport, "loseConnection", None)
        if abort is not None:
            abort()


def _follow(d: Deferred[Any]) -> Deferred[None]:
    """A new Deferred that fires when ``d`` does, leaving ``d``'s result alone."""
    follower: Deferred[None] = Deferred()

    def fire(result: Any) -> Any:
        follower.callback(None)
        return result

    d.addBoth(fire)
    return follower


def protocol_factory(build: Callable[[Any], Any]) -> Factory:
    """A quiet factory building ``build(address)`` (sources reconnect often: no
    "Starting factory" log lines)."""
    return _Building(build)


class _Building(Factory):
    noisy = False

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self.build = build

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self.build(addr)
        protocol.factory = self
        return protocol
