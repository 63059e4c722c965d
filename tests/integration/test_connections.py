"""Connection caps, deadlines and back-pressure (issue #22, items 5, 6 and 9), on real sockets.

A real meteremu on 127.0.0.1 (HTTP and Modbus TCP on port 0), attacked by
raw TCP clients: pipelined requests whose answers are never read, slowloris
heads, silent connections, more connections than the caps allow. Each test
asserts what the server does (408, closed, refused, reading paused, every
answer delivered once the client reads), never how fast. The deadlines are
configured short so that waits stay short; every wait is bounded.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from meteremu.compat.http_server import HELD
from meteremu.compat.tcp import backlog
from meteremu.connections import HTTP, MODBUS
from tests.support import sample_reading, start_app, test_config
from tests.support.rawtcp import SMALL_BUFFER, UPGRADE, connect, masked, modbus_read
from tests.support.server_side import BACKLOG_LIMIT, wait_for

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h", "start_time": "12:00", "seed": 3}}}
WAIT = 10.0  # s: the bound on every wait (the deadlines below are well under it)
GET = b"GET /shelly HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def answers(data: bytes) -> int:
    """How many whole answers ``data`` holds (the routes answer chunked: count the last chunks)."""
    return data.count(b"\r\n0\r\n\r\n")


class ConnectionsBase(TestCase):
    timeout = 60
    server: dict[str, Any] = {}

    @inlineCallbacks
    def setUp(self) -> Any:
        server = {"host": "127.0.0.1", "http_port": 0, **self.server}
        config = test_config(self.mktemp(), meters=SIM, server=server,
                             devices=[{"type": "shelly_pro_3em", "modbus_port": 0, "modbus_bind": "127.0.0.1"}])
        self.app = yield start_app(self, config)
        meter = self.app.meters["grid"]
        meter.update(sample_reading(meter.latest.measured_at + 1))
        self.http = self.app.http_port()
        self.modbus = self.app.device_services[0].modbus.port
        self.registry = self.app.connections

    def server_side(self, kind: str, before: set[Any]) -> Any:
        """The one server-side protocol of ``kind`` that appeared since ``before``."""
        [entry] = [e for e in self.registry.connections() if e.kind == kind and e not in before]
        return entry.protocol

    @inlineCallbacks
    def served(self, client: Any) -> Any:
        """Send one GET and wait for its whole answer (the connection stays open)."""
        start = len(client.received)
        client.transport.write(GET)
        yield wait_for(lambda: answers(client.received[start:]) == 1, timeout=WAIT)


class BackPressureTests(ConnectionsBase):
    """Clients that ask and never read what they asked for (items 5 and 6)."""

    server = {"idle_timeout": 30}

    @inlineCallbacks
    def stall(self, client: Any, server: Any, requests: bytes) -> Any:
        """``client`` sends ``requests`` and reads nothing; returns the server's peak backlog once nothing moves."""
        client.stop_reading()
        server.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        client.transport.write(requests)
        peak = 0

        def progress() -> int:
            nonlocal peak
            peak = max(peak, backlog(server.transport) if server.transport is not None else 0)
            return backlog(client.transport) + backlog(server.transport) + len(client.received)

        yield wait_for(lambda: False, progress=progress, timeout=WAIT)  # until nothing moves any more
        return peak

    @inlineCallbacks
    def test_pipelined_http_requests_are_not_read_while_answers_are_not(self) -> Any:
        """4 such connections once took +365 MB: the channel parsed and answered without end."""
        before = set(self.registry.connections())
        client = yield connect(self, self.http)
        yield wait_for(lambda: len(self.registry.connections()) > len(before), timeout=WAIT)
        channel = self.server_side(HTTP, before)
        peak = yield self.stall(client, channel, GET * 20000)  # 840 kB asking for about 14 MB
        self.assertLessEqual(peak, BACKLOG_LIMIT, f"{peak} bytes of answers held for a client that does not read")
        self.assertEqual(channel.state, HELD)
        self.assertNotIn(channel.transport, reactor.getReaders(), "the server still reads from a client that does not read")
        # Once the client reads again, so does the server: answers keep coming on the same connection.
        stalled = answers(client.received)
        client.transport.resumeProducing()
        yield wait_for(lambda: answers(client.received) > stalled + 200, timeout=WAIT)
        self.assertFalse(client.closed.called)

    @inlineCallbacks
    def test_modbus_requests_are_not_read_while_answers_are_not(self) -> Any:
        """A Modbus client that never read grew the process about 5 MB/s."""
        before = set(self.registry.connections())
        client = yield connect(self, self.modbus)
        yield wait_for(lambda: len(self.registry.connections()) > len(before), timeout=WAIT)
        protocol = self.server_side(MODBUS, before)
        frames = b"".join(modbus_read(tid) for tid in range(30000))  # 360 kB asking for about 5 MB
        peak = yield self.stall(client, protocol, frames)
        self.assertLessEqual(peak, BACKLOG_LIMIT, f"{peak} bytes of answers held for a client that does not read")
        self.assertNotIn(protocol.transport, reactor.getReaders(), "the server still reads from a client that does not read")
        stalled = len(client.received)
        client.transport.resumeProducing()
        yield wait_for(lambda: len(client.received) > stalled + 200 * 169, timeout=WAIT)
        whole = len(client.received) // 169
        tids = [int.from_bytes(client.received[i * 169:i * 169 + 2], "big") for i in range(whole)]
        self.assertEqual(tids, list(range(whole)), "every answer, in order")
        self.assertFalse(client.closed.called)


class Turns:
    """Counts reactor iterations (a ``callLater(0)`` chain) and what happened in each."""

    def __init__(self, case: TestCase) -> None:
        self.turn = 0
        self.events: dict[int, int] = {}
        self.call = reactor.callLater(0, self._tick)
        case.addCleanup(lambda: self.call.active() and self.call.cancel())

    def _tick(self) -> None:
        self.turn += 1
        self.call = reactor.callLater(0, self._tick)

    def record(self) -> None:
        self.events[self.turn] = self.events.get(self.turn, 0) + 1

    def wrap(self, case: TestCase, obj: Any, name: str) -> None:
        real = getattr(obj, name)

        def wrapped(*args: Any) -> Any:
            self.record()
            return real(*args)

        case.patch(obj, name, wrapped)


class SliceTests(ConnectionsBase):
    """One read full of pipelined requests is answered over several reactor turns."""

    @inlineCallbacks
    def test_pipelined_http_requests_are_answered_a_few_per_turn(self) -> Any:
        from meteremu.compat.http_server import PIPELINE_BURST

        before = set(self.registry.connections())
        client = yield connect(self, self.http)
        yield wait_for(lambda: len(self.registry.connections()) > len(before), timeout=WAIT)
        channel = self.server_side(HTTP, before)
        turns = Turns(self)
        turns.wrap(self, channel, "allContentReceived")
        client.transport.write(GET * 100)
        yield wait_for(lambda: answers(client.received) == 100, timeout=WAIT)
        self.assertEqual(sum(turns.events.values()), 100)
        self.assertLessEqual(max(turns.events.values()), PIPELINE_BURST)

    @inlineCallbacks
    def test_pipelined_modbus_requests_are_answered_a_few_per_turn(self) -> Any:
        from meteremu.devices.shelly.modbus import FRAMES_PER_TURN

        before = set(self.registry.connections())
        client = yield connect(self, self.modbus)
        yield wait_for(lambda: len(self.registry.connections()) > len(before), timeout=WAIT)
        protocol = self.server_side(MODBUS, before)
        turns = Turns(self)
        turns.wrap(self, protocol, "_answer")
        client.transport.write(b"".join(modbus_read(tid) for tid in range(1000)))
        yield wait_for(lambda: len(client.received) == 1000 * 169, timeout=WAIT)
        self.assertEqual(sum(turns.events.values()), 1000)
        self.assertLessEqual(max(turns.events.values()), FRAMES_PER_TURN)


class DeadlineTests(ConnectionsBase):
    """Slowloris and silent connections (items 6 and 9)."""

    server = {"header_timeout": 0.5, "idle_timeout": 1}

    @inlineCallbacks
    def test_a_request_head_sent_slowly_is_answered_408(self) -> Any:
        client = yield connect(self, self.http)
        client.transport.write(b"GET /shelly HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(100):  # a header byte every 50 ms: Twisted's timeout restarted at each
            if client.closed.called:
                break
            client.transport.write(b"X")
            yield deferLater(reactor, 0.05, lambda: None)
        yield client.closed.addTimeout(WAIT, reactor)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 408 "), client.received[:100])
        self.assertIn(b"Connection: close", client.received)

    @inlineCallbacks
    def test_a_body_sent_slowly_is_answered_408(self) -> Any:
        client = yield connect(self, self.http)
        client.transport.write(b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        for _ in range(100):
            if client.closed.called:
                break
            client.transport.write(b" ")
            yield deferLater(reactor, 0.05, lambda: None)
        yield client.closed.addTimeout(WAIT, reactor)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 408 "), client.received[:100])

    @inlineCallbacks
    def test_a_silent_http_connection_is_closed(self) -> Any:
        client = yield connect(self, self.http)
        yield client.closed.addTimeout(WAIT, reactor)
        self.assertEqual(client.received, b"", "nothing was asked: nothing to answer")
        yield wait_for(lambda: len(self.registry) == 0, timeout=WAIT)

    @inlineCallbacks
    def test_an_idle_keep_alive_connection_is_closed_after_its_answers(self) -> Any:
        client = yield connect(self, self.http)
        yield self.served(client)
        yield self.served(client)  # a second request on the same connection
        yield client.closed.addTimeout(WAIT, reactor)
        self.assertEqual(client.received.count(b"HTTP/1.1 200 "), 2)
        self.assertNotIn(b" 408 ", client.received)

    @inlineCallbacks
    def test_a_silent_modbus_connection_is_closed(self) -> Any:
        client = yield connect(self, self.modbus)
        yield client.closed.addTimeout(WAIT, reactor)
        self.assertEqual(client.received, b"")

    @inlineCallbacks
    def test_a_modbus_client_is_closed_when_it_stops_asking(self) -> Any:
        client = yield connect(self, self.modbus)
        client.transport.write(modbus_read(1))
        yield wait_for(lambda: len(client.received) == 169, timeout=WAIT)
        yield client.closed.addTimeout(WAIT, reactor)
        self.assertEqual(len(client.received), 169)

    @inlineCallbacks
    def test_a_modbus_frame_sent_slowly_does_not_keep_the_connection(self) -> Any:
        client = yield connect(self, self.modbus)
        frame = modbus_read(1)
        for byte in range(100):  # a byte every 50 ms, never a whole request
            if client.closed.called:
                break
            client.transport.write(frame[byte % 11:byte % 11 + 1])
            yield deferLater(reactor, 0.05, lambda: None)
        yield client.closed.addTimeout(WAIT, reactor)

    @inlineCallbacks
    def test_an_http_client_that_does_not_read_its_answers_is_dropped(self) -> Any:
        before = set(self.registry.connections())
        client = yield connect(self, self.http)
        yield wait_for(lambda: len(self.registry.connections()) > len(before), timeout=WAIT)
        channel = self.server_side(HTTP, before)
        client.stop_reading()
        channel.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        client.transport.write(GET * 5000)
        yield wait_for(lambda: channel.state == HELD, timeout=WAIT)
        yield wait_for(lambda: len(self.registry) == len(before), timeout=WAIT)  # dropped at idle_timeout
        self.assertIsNone(channel._held)

    @inlineCallbacks
    def test_a_modbus_client_that_does_not_read_its_answers_is_dropped(self) -> Any:
        before = set(self.registry.connections())
        client = yield connect(self, self.modbus)
        yield wait_for(lambda: len(self.registry.connections()) > len(before), timeout=WAIT)
        protocol = self.server_side(MODBUS, before)
        client.stop_reading()
        protocol.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        client.transport.write(b"".join(modbus_read(tid) for tid in range(20000)))
        yield wait_for(lambda: protocol._paused, timeout=WAIT)
        yield wait_for(lambda: len(self.registry) == len(before), timeout=WAIT)
        self.assertEqual(protocol.dropped_reason, "does not read its answers")

    @inlineCallbacks
    def test_tcp_keep_alive_is_on(self) -> Any:
        before = set(self.registry.connections())
        yield connect(self, self.http)
        yield connect(self, self.modbus)
        yield wait_for(lambda: len(self.registry) == len(before) + 2, timeout=WAIT)
        for entry in self.registry.connections():
            handle = entry.protocol.transport.getHandle()
            self.assertEqual(handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1, entry.kind)


class CapTests(ConnectionsBase):
    """More connections than allowed (items 6 and 9)."""

    server = {"max_connections": 6, "max_connections_per_ip": 4, "max_modbus_connections": 2}

    @inlineCallbacks
    def test_past_the_per_address_cap_new_connections_are_refused(self) -> Any:
        clients = []
        for _ in range(4):
            clients.append((yield connect(self, self.http)))
        yield wait_for(lambda: len(self.registry) == 4, timeout=WAIT)
        extra = yield connect(self, self.http)
        yield extra.closed.addTimeout(WAIT, reactor)
        self.assertEqual(extra.received, b"")
        self.assertEqual(self.registry.refused, 1)
        self.assertFalse(any(c.closed.called for c in clients), "the refusal closed only the new one")
        clients[0].transport.loseConnection()
        yield wait_for(lambda: len(self.registry) == 3, timeout=WAIT)
        again = yield connect(self, self.http)
        yield self.served(again)  # room again once one is gone

    @inlineCallbacks
    def test_refusals_and_evictions_are_in_the_metrics(self) -> Any:
        self.registry.refused, self.registry.evicted = 3, 2
        client = yield connect(self, self.http)
        client.transport.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        yield client.closed.addTimeout(WAIT, reactor)
        self.assertIn(b"meteremu_connections_refused_total 3.0", client.received)
        self.assertIn(b"meteremu_connections_evicted_total 2.0", client.received)
        self.assertIn(b'meteremu_connections{kind="http"} 1.0', client.received)

    @inlineCallbacks
    def test_at_the_modbus_cap_the_oldest_silent_connection_makes_room(self) -> Any:
        reader = yield connect(self, self.modbus)
        reader.transport.write(modbus_read(1))
        yield wait_for(lambda: len(reader.received) == 169, timeout=WAIT)  # served
        silent = yield connect(self, self.modbus)
        yield wait_for(lambda: self.registry.count(MODBUS) == 2, timeout=WAIT)
        newer = yield connect(self, self.modbus)
        yield silent.closed.addTimeout(WAIT, reactor)  # evicted, not the served one, not the new one
        self.assertFalse(reader.closed.called)
        reader.transport.write(modbus_read(2))
        newer.transport.write(modbus_read(3))
        yield wait_for(lambda: len(reader.received) == 2 * 169 and len(newer.received) == 169, timeout=WAIT)
        self.assertEqual(self.registry.evicted, 1)

    @inlineCallbacks
    def test_at_the_modbus_cap_with_every_connection_served_a_new_one_is_refused(self) -> Any:
        readers = []
        for tid in range(2):
            reader = yield connect(self, self.modbus)
            reader.transport.write(modbus_read(tid))
            yield wait_for(lambda reader=reader: len(reader.received) == 169, timeout=WAIT)
            readers.append(reader)
        extra = yield connect(self, self.modbus)
        yield extra.closed.addTimeout(WAIT, reactor)
        self.assertEqual(self.registry.refused, 1)
        self.assertFalse(any(r.closed.called for r in readers))

    @inlineCallbacks
    def test_at_the_total_cap_the_oldest_connection_without_a_request_makes_room(self) -> Any:
        self.registry.limits = type(self.registry.limits)(max_connections=4, max_per_ip=100, max_modbus=2)
        busy = yield connect(self, self.http)
        yield self.served(busy)
        silent = []
        for _ in range(3):
            silent.append((yield connect(self, self.http)))
        yield wait_for(lambda: len(self.registry) == 4, timeout=WAIT)
        newcomer = yield connect(self, self.http)
        yield silent[0].closed.addTimeout(WAIT, reactor)  # the oldest silent one
        self.assertFalse(busy.closed.called, "a connection that was served is not evicted")
        self.assertFalse(any(c.closed.called for c in silent[1:]))
        yield self.served(newcomer)
        yield self.served(busy)
        self.assertEqual(len(self.registry), 4)

    @inlineCallbacks
    def test_a_websocket_keeps_its_place_and_gives_it_back(self) -> Any:
        from tests.support import fuzz as fz

        client = yield fz.ws_connect(self.http)
        yield client.probe("Shelly.GetDeviceInfo")
        [entry] = self.registry.connections()
        self.assertTrue(entry.served, "an upgraded connection has completed its request")
        self.assertEqual(type(entry.protocol).__name__, "ShellyWebSocketProtocol")
        client.transport.loseConnection()
        yield wait_for(lambda: len(self.registry) == 0, timeout=WAIT)


class LogFloodTests(ConnectionsBase):
    """Connections an attacker breaks in a loop write a line a minute, not a line each."""

    @inlineCallbacks
    def test_websocket_clients_dropped_in_a_loop(self) -> Any:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for _ in range(20):  # each is dropped for a fragmented message of too many frames
            client = yield connect(self, self.http)
            client.transport.write(UPGRADE)
            yield wait_for(lambda client=client: b"\r\n\r\n" in client.received, timeout=WAIT)
            client.transport.write(masked(0x1, b"{", fin=False) + masked(0x0, fin=False) * 300)
            yield client.closed.addTimeout(WAIT, reactor)
        warned = [e for e in events if e.get("log_level") is not None and e["log_level"].name in ("warn", "error")]
        self.assertLessEqual(len(warned), 3, [e.get("log_format") for e in warned])


class ReleaseTests(ConnectionsBase):
    """What a closed connection held is let go at once, not at the next full garbage collection."""

    @inlineCallbacks
    def test_unsent_answers_of_a_dropped_websocket_client(self) -> Any:
        client = yield connect(self, self.http)
        client.stop_reading()
        client.transport.write(UPGRADE)
        yield wait_for(lambda: len(self.registry) == 1 and self.registry.connections()[0].served, timeout=WAIT)
        server = self.registry.connections()[0].protocol
        server.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        ping = masked(0x9, b"p" * 125)
        while not client.closed.called and len(self.registry):
            client.transport.write(ping * 256)
            yield deferLater(reactor, 0.01, lambda: None)
        yield wait_for(lambda: len(self.registry) == 0, timeout=WAIT)  # dropped: it stopped reading
        self.assertEqual(backlog(server.transport), 0)
        self.assertEqual(server._pending_input, b"")

    @inlineCallbacks
    def test_unsent_answers_of_a_pipelining_client_that_went_away(self) -> Any:
        before = set(self.registry.connections())
        client = yield connect(self, self.http)
        yield wait_for(lambda: len(self.registry.connections()) > len(before), timeout=WAIT)
        channel = self.server_side(HTTP, before)
        client.stop_reading()
        channel.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        client.transport.write(GET * 5000)
        yield wait_for(lambda: channel.state == HELD and backlog(channel.transport) > 0, timeout=WAIT)
        client.transport.abortConnection()
        yield wait_for(lambda: len(self.registry) == 0, timeout=WAIT)
        self.assertEqual(backlog(channel.transport), 0)
        self.assertEqual(channel._dataBuffer, [])
