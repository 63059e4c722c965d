"""Contracts with other libraries' internals (``meteremu.compat``).

Each test here pins one thing a ``meteremu.compat`` module relies on and
Twisted or Autobahn does not promise: an upgrade that changes it fails here,
with the module to look at, instead of in the field. ``meteremu.compat.lazytls``
has its own, larger contract suite in ``tests/test_lazytls.py`` (the names it
restores are compared with the installed Twisted's source).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientCreator, DatagramProtocol, Factory, Protocol
from twisted.trial.unittest import TestCase

from meteremu.compat.tcp import backlog, write_now
from meteremu.compat.udp import raw_sendto


class _Sink(Protocol):
    """Collects what arrives; fires ``done`` once ``expected`` bytes came."""

    def __init__(self, expected: int) -> None:
        self.expected, self.data, self.done = expected, bytearray(), Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.expected and not self.done.called:
            self.done.callback(bytes(self.data))


class WriteNowTests(TestCase):
    """``write_now`` on a real TCP connection: order kept, queue respected."""

    @inlineCallbacks
    def connected(self) -> Any:
        server_side: Deferred[Protocol] = Deferred()

        class Server(Protocol):
            def connectionMade(self) -> None:
                server_side.callback(self)

        listener = reactor.listenTCP(0, Factory.forProtocol(Server), interface="127.0.0.1")
        self.addCleanup(listener.stopListening)
        sink = _Sink(0)
        client = yield ClientCreator(reactor, lambda: sink).connectTCP("127.0.0.1", listener.getHost().port)
        self.addCleanup(client.transport.loseConnection)
        server = yield server_side
        self.addCleanup(server.transport.loseConnection)
        return server.transport, sink

    @inlineCallbacks
    def test_sends_at_once_and_queues_the_rest_in_order(self) -> Any:
        transport, sink = yield self.connected()
        big = bytes(range(256)) * 40_000  # 10 MB: more than the kernel takes at once
        sink.expected = 5 + len(big) + 5
        self.assertTrue(write_now(transport, b"first"))
        self.assertEqual(backlog(transport), 0, "a small frame should have left at once")
        self.assertTrue(write_now(transport, big))
        self.assertGreater(backlog(transport), 0, "the rest of a big frame is queued")
        # Bytes are queued now: write_now must refuse, so the caller queues behind them.
        self.assertFalse(write_now(transport, b"later"))
        transport.write(b"later")
        got = yield sink.done
        self.assertEqual(got, b"first" + big + b"later")

    def test_other_transports_take_the_normal_path(self) -> None:
        from twisted.internet.testing import StringTransport

        self.assertFalse(write_now(StringTransport(), b"x"))

    @inlineCallbacks
    def test_the_buffer_attributes_exist_on_a_real_connection(self) -> Any:
        transport, _ = yield self.connected()
        for name in ("dataBuffer", "offset", "_tempDataLen"):
            self.assertTrue(hasattr(transport, name), f"tcp.Server has no {name}: see compat/tcp.py")
        transport.write(b"x" * 100)  # a small write waits in _tempDataLen until the next turn
        self.assertEqual(backlog(transport), 100)


class RawSendToTests(TestCase):
    """``compat.udp.raw_sendto`` sends on the listening socket itself."""

    @inlineCallbacks
    def test_an_answer_goes_out_from_the_listening_port(self) -> Any:
        port = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        received: Deferred[tuple[bytes, tuple[str, int]]] = Deferred()

        class Receiver(DatagramProtocol):
            def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
                received.callback((data, addr))

        client = reactor.listenUDP(0, Receiver(), interface="127.0.0.1")
        self.addCleanup(client.stopListening)
        sendto = raw_sendto(port)
        assert sendto is not None
        sendto(b"answer", ("127.0.0.1", client.getHost().port))
        data, source = yield received.addTimeout(5, reactor)
        self.assertEqual(data, b"answer")
        self.assertEqual(source, ("127.0.0.1", port.getHost().port))

    def test_a_transport_without_a_socket_gives_none(self) -> None:
        self.assertIsNone(raw_sendto(object()))
