"""``meteremu.reconnect`` (ClientService with the owner's hooks) and
``meteremu.serialendpoint`` (a serial port as a client endpoint), on real
sockets and a real pseudo-terminal; waits run on ``Clock``s."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from meteremu.reconnect import CLOSE_WAIT, Reconnector, protocol_factory
from meteremu.serialendpoint import SerialAddress, SerialEndpoint, SerialLine
from tests.support.p1 import PtyMaster


class _Held(Protocol):
    """The server side: keeps every connection until the client closes it."""

    def connectionMade(self) -> None:
        self.factory.made.append(self)
        self.gone: Deferred[None] = Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.gone.callback(None)


class _Client(Protocol):
    def __init__(self, owner: _Owner) -> None:
        self.owner = owner

    def connectionMade(self) -> None:
        self.owner.events.append("connected")
        self.owner.connected.append(self)


class _Owner:
    """What a source gives a Reconnector: its policy and hooks, recording them."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.events: list[str] = []
        self.connected: list[_Client] = []

    def retry(self) -> float:
        delay = self.delays.pop(0)
        self.events.append(f"wait {delay:g}")
        return delay

    def attempting(self) -> None:
        self.events.append("attempt")

    def failed(self, failure: Failure) -> None:
        self.events.append(f"failed: {failure.type.__name__}")


class ReconnectorTests(TestCase):
    timeout = 30

    def reconnector(self, port: int, owner: _Owner, clock: Clock, stop_clock: Any = reactor) -> Reconnector:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        return Reconnector(endpoint, protocol_factory(lambda _: _Client(owner)), clock=clock, reactor=stop_clock,
                           retry=owner.retry, attempting=owner.attempting, failed=owner.failed)

    @inlineCallbacks
    def test_the_owner_decides_every_wait_and_hears_every_attempt(self) -> Any:
        factory = Factory.forProtocol(_Held)
        factory.made = []
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        number = listening.getHost().port
        yield listening.stopListening()  # refused until it listens again
        clock = Clock()
        owner = _Owner([5.0, 7.0, 1.0])
        reconnector = self.reconnector(number, owner, clock)
        reconnector.start()
        self.assertEqual(owner.events, ["attempt"])  # at once, not after a wait
        while len(owner.events) < 3:
            yield _turn()
        self.assertEqual(owner.events, ["attempt", f"failed: {ConnectionRefusedError.__name__}", "wait 5"])
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [5.0])  # the owner's wait, not ClientService's
        clock.advance(5.0)
        while len(owner.events) < 6:
            yield _turn()
        self.assertEqual(owner.events[3:], ["attempt", f"failed: {ConnectionRefusedError.__name__}", "wait 7"])
        listening = reactor.listenTCP(number, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        clock.advance(7.0)
        while not factory.made or not owner.connected:
            yield _turn()
        self.assertEqual(owner.events[6:], ["attempt", "connected"])
        # The server goes away: the owner's policy is asked, the wait starts.
        factory.made[0].transport.loseConnection()
        while len(owner.events) < 9:
            yield _turn()
        self.assertEqual(owner.events[8:], ["wait 1"])
        yield reconnector.stop()  # while waiting: the retry is cancelled
        self.assertEqual(clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_stop_waits_for_the_owners_goodbye_a_bounded_time(self) -> Any:
        factory = Factory.forProtocol(_Held)
        factory.made = []
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        owner = _Owner([3600.0])
        stop_clock = Clock()
        reconnector = self.reconnector(listening.getHost().port, owner, Clock(), stop_clock)
        reconnector.start()
        while not factory.made or not owner.connected:
            yield _turn()
        goodbye: Deferred[None] = Deferred()  # the other end never answers the goodbye
        stopped = reconnector.stop(goodbye)
        for _ in range(5):
            yield _turn()
        self.assertNoResult(stopped)
        self.assertNoResult(factory.made[0].gone)  # left to the goodbye meanwhile
        stop_clock.advance(CLOSE_WAIT)
        yield factory.made[0].gone
        yield stopped


class SerialEndpointTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_a_port_opens_with_its_line_in_the_address(self) -> Any:
        pty = PtyMaster(self)
        built: list[Any] = []

        def build(address: Any) -> Protocol:
            built.append(address)
            return Protocol()

        protocol = yield SerialEndpoint(reactor, pty.path, SerialLine(9600, 7, "E", 1)).connect(
            protocol_factory(build))
        self.addCleanup(protocol.transport.loseConnection)
        self.assertEqual(built, [SerialAddress(pty.path, SerialLine(9600, 7, "E", 1))])
        self.assertEqual(pty.baudrate(), 9600)
        self.assertEqual(str(built[0].line), "9600 7E1")

    def test_a_missing_device_is_a_failed_attempt(self) -> None:
        d = SerialEndpoint(reactor, "/dev/does-not-exist-endpoint", SerialLine(1200)).connect(
            protocol_factory(lambda _: Protocol()))
        failure = self.failureResultOf(d, OSError)
        self.assertIn("does-not-exist-endpoint", str(failure.value))


def _turn() -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d
