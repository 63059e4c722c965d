"""The WebSocket client the push sources share (Home Assistant, HomeWizard v2).

A source connects through :func:`websocket_reconnector` (autobahn's client
factory on a TCP or TLS endpoint, kept up by Twisted's ``ClientService``, see
:mod:`meteremu.reconnect`) and hears of its connection through four methods,
called by :class:`SourceWebSocket`: ``ws_connected(conn)`` (TCP up, the
handshakes still to come), ``ws_opened(conn)``, ``ws_message(conn, payload)``
and ``ws_closed(conn, code, reason)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure

from meteremu.interfaces import IReactor, IReactorTime
from meteremu.reconnect import Reconnector
from meteremu.tls import TLSPolicy


class WebSocketSource(Protocol):
    """What a source offers its connections."""

    def ws_connected(self, conn: SourceWebSocket) -> None: ...

    def ws_opened(self, conn: SourceWebSocket) -> None: ...

    def ws_message(self, conn: SourceWebSocket, payload: bytes) -> None: ...

    def ws_closed(self, conn: SourceWebSocket, code: int | None, reason: str | None) -> None: ...


class SourceWebSocket(WebSocketClientProtocol):
    """Autobahn's callbacks → the source (one instance per connection).

    ``closed`` fires when the connection is gone; ``reason`` is why the
    source ended it, if it did.
    """

    def __init__(self) -> None:
        super().__init__()
        self.closed: Deferred[None] = Deferred()
        self.reason: str | None = None

    @property
    def source(self) -> WebSocketSource:
        source: WebSocketSource = self.factory.source
        return source

    def connectionMade(self) -> None:
        super().connectionMade()
        self.source.ws_connected(self)

    def onOpen(self) -> None:
        self.source.ws_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.source.ws_message(self, payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.source.ws_closed(self, code, reason)
        if not self.closed.called:
            self.closed.callback(None)


class _SourceFactory(WebSocketClientFactory):
    """Autobahn's client factory, with the source its connections report to."""

    protocol = SourceWebSocket

    def __init__(self, url: str, source: WebSocketSource) -> None:
        super().__init__(url)
        self.source = source


def websocket_reconnector(source: WebSocketSource, url: str, host: str, port: int, *, tls: TLSPolicy,
                          timeout: float, max_size: int, reactor: IReactor, clock: IReactorTime,
                          retry: Callable[[], float],
                          attempting: Callable[[], None], failed: Callable[[Failure], None],
                          name: str) -> Reconnector:
    """A WebSocket to ``url`` at ``host``:``port`` (TLS by ``tls`` for ``wss://``), kept up for ``source``.

    ``timeout`` bounds the TCP connect and the opening handshake; messages
    and frames may be ``max_size`` bytes.
    """
    factory = _SourceFactory(url, source)
    factory.setProtocolOptions(openHandshakeTimeout=timeout, maxMessagePayloadSize=max_size,
                               maxFramePayloadSize=max_size)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if urlsplit(url).scheme == "wss":
        endpoint = wrapClientTLS(tls.creatorForNetloc(host.encode(), port), endpoint)
    return Reconnector(endpoint, factory, clock=clock, reactor=reactor, retry=retry, attempting=attempting,
                       failed=failed, name=name)
