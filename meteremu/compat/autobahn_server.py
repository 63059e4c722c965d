"""Autobahn's WebSocket server protocol on Twisted, without ``autobahn.twisted``.

Autobahn does the WebSocket work (handshake, framing, UTF-8 validation and
unmasking in C, size limits, auto-ping, opening/closing handshake timeouts);
this module is only the glue between it and a Twisted transport. Autobahn's
own glue lives in the ``autobahn.twisted`` package, whose ``__init__`` imports
its WAMP stack and, through it, cryptography: about 7 MiB that a Shelly
WebSocket server never uses (measured in bench/findings.md). The glue below is
what ``autobahn.twisted.websocket`` and ``autobahn.twisted.resource`` do for a
plain (non-TLS, non-WAMP) server: the same adapter contract that Autobahn's
asyncio glue implements (``_connectionMade``, ``_dataReceived``,
``_connectionLost`` in; ``_closeConnection`` and the ``_on…`` callbacks out).
The Home Assistant and HomeWizard *clients* still use ``autobahn.twisted``;
they are loaded only when such a source is configured.

Private names used (checked with Autobahn 24.4 to 26.11 and Twisted 26.10;
``setup.cfg`` pins ``autobahn<27``; ``tests/unit/test_compat.py`` and ``tests/integration/test_compat.py`` fails when the
core calls a hook this glue does not forward): Autobahn's adapter contract
(``_connectionMade``, ``_dataReceived``, ``_connectionLost``,
``_closeConnection``, the ``_on…`` hooks), ``PreparedMessage.payloadHybi``,
and Twisted's ``_networkProducer`` of a TLS-wrapped transport.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import txaio

txaio.use_twisted()  # before Autobahn is imported: its classes make their loggers at import

from autobahn.wamp.types import TransportDetails  # noqa: E402
from autobahn.websocket import protocol  # noqa: E402
from autobahn.websocket.protocol import PreparedMessage  # noqa: E402, F401  (for ws.py)
from autobahn.websocket.types import ConnectionRequest  # noqa: E402, F401  (for ws.py)
from twisted.internet.address import IPv4Address, IPv6Address  # noqa: E402
from twisted.internet.interfaces import IReactorTime  # noqa: E402
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone  # noqa: E402
from twisted.logger import Logger  # noqa: E402
from twisted.protocols.policies import ProtocolWrapper  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import NOT_DONE_YET, Request  # noqa: E402

from meteremu.compat.tcp import backlog, release_buffers  # noqa: E402
from meteremu.ratelog import RateLimitedLog  # noqa: E402


def peer_name(address: object) -> str:
    """Autobahn's peer descriptor (``tcp4:127.0.0.1:52914``), used in its log lines."""
    if isinstance(address, IPv4Address):
        return f"tcp4:{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"tcp6:{address.host}:{address.port}"
    return "unknown"


make_logger: Any = getattr(txaio, "make_logger")  # noqa: B009  (set by use_twisted(); untyped)


class ConnectionLog:
    """Autobahn's log lines about one connection, at most once a minute per message, with a count.

    Autobahn logs a warning for every connection it drops uncleanly
    ("dropping connection to peer … with abort=True") and an info line for
    every failed opening handshake: an attacker who opens and breaks
    connections in a loop wrote 150 lines a second to the journal. Debug
    lines go to Autobahn's own logger (filtered by level as before).
    """

    def __init__(self, limited: RateLimitedLog, debug: Any) -> None:
        self.limited = limited
        self.debug = debug
        self.trace = debug

    def info(self, format: str, **fields: Any) -> None:
        self.limited.emit("info", format, format, **fields)

    def warn(self, format: str, **fields: Any) -> None:
        self.limited.emit("warn", format, format, **fields)

    def error(self, format: str, **fields: Any) -> None:
        self.limited.emit("error", format, format, **fields)


class WebSocketServerProtocol(Protocol, protocol.WebSocketServerProtocol):
    """A Twisted protocol driving Autobahn's network-independent server protocol."""

    log = make_logger()
    is_server = True
    peer = "unknown"
    # A TCP or TLS transport; Twisted types it ITransport | None, the glue
    # uses what those two have (abortConnection, producers).
    transport: Any

    def connectionMade(self) -> None:
        self.log = self.factory.connection_log
        self._transport_details = TransportDetails(
            channel_type=TransportDetails.CHANNEL_TYPE_TCP,
            channel_framing=TransportDetails.CHANNEL_FRAMING_WEBSOCKET,
            peer=peer_name(self.transport.getPeer()), is_server=True,
            own_pid=os.getpid(), own_tid=threading.get_native_id(), own_fd=-1,
            is_secure=False, channel_id={}, peer_cert=None)
        self.peer = self._transport_details.peer or "unknown"
        self._connectionMade()  # copies the factory's options (tcpNoDelay among them) onto us
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(getattr(self, "tcpNoDelay", True))

    tracked: Any = None  # meteremu.connections.Tracked, handed over by the HTTP channel

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.tracked is not None:
            self.tracked.release()
        lost: Any = self._connectionLost  # Autobahn annotates the reason as str; it takes a Failure
        lost(reason)
        # The bytes still held for this connection go now, not at the next full GC (see release_buffers).
        self._pending_input = b""
        self.data = b""  # Autobahn's receive buffer
        release_buffers(self.transport)

    # -- limits an abusive client meets (what Autobahn does not bound itself) ----------
    # Input is fed to Autobahn in slices, with reading paused in between: a
    # 64 KiB read of tiny frames (pings, empty continuations) costs Autobahn
    # about 45 ms, and every other transport would wait that long.
    input_slice = 4096
    # Bytes written and not yet sent (pongs and close frames included) past
    # which the client is dropped: it asks (pings) but does not read.
    max_backlog = 512 * 1024
    # A fragmented message may have this many frames and take this long.
    max_message_frames = 256
    max_message_seconds = 30.0
    dropped_reason: str | None = None

    def dataReceived(self, data: bytes) -> None:
        pending = getattr(self, "_pending_input", b"")
        if pending:  # reading is paused until the backlog is fed: keep the order
            self._pending_input = pending + data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        slice_size = self.input_slice
        if len(data) <= slice_size:
            self._pending_input = b""
            self._dataReceived(data)
            return
        self._pending_input = data[slice_size:]
        self.transport.pauseProducing()
        self._dataReceived(data[:slice_size])
        self.factory.reactor.callLater(0, self._feed_more)

    def _feed_more(self) -> None:
        data, self._pending_input = self._pending_input, b""
        if not data or self.state == self.STATE_CLOSED or self.transport is None:
            return
        self._feed(data)
        if not self._pending_input and self.transport is not None:
            self.transport.resumeProducing()

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Every frame goes through here (pongs too): a client that stopped reading is dropped."""
        if self.transport is not None and backlog(self.transport) + len(data) > self.max_backlog:
            self.drop(f"it stopped reading ({backlog(self.transport)} bytes unsent)")
            return
        super().sendData(data, sync, chopsize)

    def drop(self, reason: str) -> None:
        """Close at once (no closing handshake with a client that misbehaves)."""
        if self.dropped_reason is None:
            self.dropped_reason = reason
            self.factory.drops.warn("drop", "dropping WebSocket client {peer}: {reason}",
                                    peer=self.peer, reason=reason)
        self.dropConnection(abort=True)

    def _closeConnection(self, abort: bool = False) -> None:
        if abort and hasattr(self.transport, "abortConnection"):
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    # Autobahn's core calls these; the application overrides the on… names.
    def _onOpen(self) -> None:
        self.onOpen()

    def _onMessageBegin(self, isBinary: bool) -> None:
        self._message_frames = 0
        self._message_started = self.factory.reactor.seconds()
        self.onMessageBegin(isBinary)

    def _onMessageFrameBegin(self, length: int) -> None:
        self._message_frames += 1
        if self._message_frames > self.max_message_frames:
            self.drop(f"a message of more than {self.max_message_frames} frames")
            return
        if self.factory.reactor.seconds() - self._message_started > self.max_message_seconds:
            self.drop(f"a message still incomplete after {self.max_message_seconds:g} s")
            return
        self.onMessageFrameBegin(length)

    def _onMessageFrameData(self, payload: bytes) -> None:
        self.onMessageFrameData(payload)

    def _onMessageFrameEnd(self) -> None:
        self.onMessageFrameEnd()

    def _onMessageFrame(self, payload: Any) -> None:
        self.onMessageFrame(payload)

    def _onMessageEnd(self) -> None:
        self.onMessageEnd()

    def _onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.onMessage(payload, isBinary)

    def _onPing(self, payload: bytes) -> None:
        self.onPing(payload)

    def _onPong(self, payload: bytes) -> None:
        self.onPong(payload)

    def _onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.onClose(wasClean, code, reason)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()


class WebSocketServerFactory(protocol.WebSocketServerFactory, ServerFactory):
    """Autobahn's server factory (options, limits, timers) as a Twisted factory."""

    log = make_logger()
    protocol = WebSocketServerProtocol

    def __init__(self, *args: Any, reactor: IReactorTime | None = None, **kwargs: Any) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor: IReactorTime = reactor
        # One line per minute for dropped clients, however many an attacker opens.
        self.drops = RateLimitedLog(Logger(namespace="meteremu.websocket"), reactor)
        self.connection_log = ConnectionLog(RateLimitedLog(Logger(namespace="meteremu.websocket.autobahn"), reactor),
                                            WebSocketServerProtocol.log.debug)
        protocol.WebSocketServerFactory.__init__(self, *args, **kwargs)


class WebSocketResource(Resource):
    """Hands an HTTP request that asks for a WebSocket upgrade to the factory's protocol.

    Twisted Web has parsed the request already; Autobahn does its own opening
    handshake, so the request line and headers are given to it again, as
    ``autobahn.twisted.resource`` does.
    """

    isLeaf = True

    def __init__(self, factory: WebSocketServerFactory) -> None:
        super().__init__()
        self.factory = factory

    def render(self, request: Request) -> bytes | int:
        transport: Any = request.channel.transport
        if transport is None:  # HTTP/2: no connection of its own to take over
            request.setResponseCode(426, b"Upgrade Required")
            request.setHeader(b"upgrade", b"websocket")
            return b"WebSocket needs HTTP/1.1\n"
        proto: Any = self.factory.buildProtocol(transport.getPeer())
        detach = getattr(request.channel, "detach", None)  # meteremu.compat.http_server.BoundedChannel
        proto.tracked = detach() if detach is not None else None  # the connection-cap entry moves along
        request.channel.transport = None  # Twisted Web lets go of the connection
        if isinstance(transport, ProtocolWrapper):  # the connection is itself wrapped (TLS)
            transport.wrappedProtocol = proto
        elif isinstance(transport.protocol, ProtocolWrapper):  # a wrapping protocol (policies)
            transport.protocol.wrappedProtocol = proto
        else:
            transport.protocol = proto
        proto.makeConnection(transport)
        if proto.tracked is not None:
            proto.tracked.attach(proto)
        # Twisted Web paused the connection while it served the request.
        producer = getattr(transport, "_networkProducer", transport)
        producer.resumeProducing()
        head = [request.method + b" " + request.uri + b" HTTP/1.1"]
        head += [name + b": " + b",".join(values) for name, values in request.requestHeaders.getAllRawHeaders()]
        body = request.content.read() if request.content is not None else b""
        proto.dataReceived(b"\r\n".join(head) + b"\r\n\r\n" + body)
        return NOT_DONE_YET
