"""A hostile client on the LAN (issue #22): each attack that froze or bloated the service.

A real meteremu on 127.0.0.1 with a UDP port; the attacker is a raw TCP or
WebSocket client; a well-behaved battery polls UDP meanwhile and must keep
being answered. Every wait is bounded; the bounds only separate "answered"
from "frozen" (seconds), timing goals live in bench/.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from meteremu.compat.tcp import backlog
from tests.support import fuzz as fz
from tests.support import sample_reading, start_app, test_config
from tests.support.faults import UdpProber
from tests.support.server_side import BACKLOG_LIMIT, SMALL_BUFFER, ServerSide, wait_for
from tests.support.udp import free_udp_ports

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h", "start_time": "12:00", "seed": 3}}}
ANSWERED = 3.0  # s: a UDP poll not answered in this long means the reactor froze
UPGRADE = (b"GET /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


def masked(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One client frame (clients must mask), payload below 126 bytes."""
    mask = os.urandom(4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + data


class RawClient(Protocol):
    """Bytes in and out; ``closed`` fires when the server closes."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        if not self.closed.called:
            self.closed.callback(None)


class HostileTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = ServerSide(self)
        self.udp = free_udp_ports(1)[0]
        config = test_config(self.mktemp(), meters=SIM,
                             devices=[{"type": "shelly_pro_3em", "udp_ports": [self.udp]}])
        self.app = yield start_app(self, config)
        self.meter = self.app.meters["grid"]
        self.meter.update(sample_reading(self.meter.latest.measured_at + 1))
        self.http = self.app.http_port()
        self.prober = UdpProber()
        port = reactor.listenUDP(0, self.prober, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

    @inlineCallbacks
    def raw(self) -> Any:
        client = RawClient()
        yield ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", self.http)
        self.addCleanup(lambda: client.transport.abortConnection() if not client.closed.called else None)
        return client

    @inlineCallbacks
    def assert_battery_answered(self) -> Any:
        reply = yield self.prober.ask("EM.GetStatus", self.udp, ANSWERED)
        self.assertIsNotNone(reply, "a battery's UDP poll was not answered: the reactor froze")

    # -- 1: an upgrade request with a body ---------------------------------------------------
    @inlineCallbacks
    def test_upgrade_request_with_a_body_is_refused_at_once(self) -> Any:
        """2 MiB of empty WebSocket frames as the body of the upgrade froze everything for 14 s."""
        client = yield self.raw()
        body = masked(0x9) * (2 * 1024 * 1024 // 6)
        client.transport.write(UPGRADE + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        yield self.assert_battery_answered()
        yield client.closed.addTimeout(ANSWERED, reactor)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 400 "), client.received[:200])
        self.assertIn(b"upgrade request carries no body", client.received)
        self.assertEqual(self.server.live, set(), "no WebSocket was opened")

    # -- 8: bodies too large for their route, refused before they are read --------------------
    @inlineCallbacks
    def test_a_huge_declared_body_is_refused_before_it_is_sent(self) -> Any:
        client = yield self.raw()
        client.transport.write(b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 1073741824\r\n\r\n")  # 1 GiB announced, nothing sent
        yield client.closed.addTimeout(ANSWERED, reactor)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 413 "), client.received[:200])
        frame = json.loads(client.received.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(frame["error"]["code"], -32700)

    @inlineCallbacks
    def test_a_chunked_body_is_cut_off_at_the_limit(self) -> Any:
        client = yield self.raw()
        client.transport.write(b"POST /rpc/EM.GetStatus HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 8192
        for _ in range(16):  # 128 KiB, twice the RPC limit
            client.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        yield client.closed.addTimeout(ANSWERED, reactor)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 413 "), client.received[:200])
        self.assertEqual(json.loads(client.received.split(b"\r\n\r\n", 1)[1])["code"], -32700)

    @inlineCallbacks
    def test_routes_without_bodies_take_only_a_little(self) -> Any:
        client = yield self.raw()
        client.transport.write(b"POST /ui/train HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        yield client.closed.addTimeout(ANSWERED, reactor)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 413 "), client.received[:200])
        self.assertIn(b"larger than 1024 bytes", client.received)

    # -- 4: pings whose pongs are never read ----------------------------------------------------
    @inlineCallbacks
    def test_pings_whose_pongs_are_never_read(self) -> Any:
        """One connection grew the process from 51 to 379 MB in 18 s."""
        before = set(self.server.live)
        client = yield fz.ws_connect(self.http)
        self.addCleanup(lambda: client.transport.abortConnection() if not client.lost.called else None)
        yield client.probe("Shelly.GetDeviceInfo")
        [server] = list(self.server.live - before)
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        server.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        client.transport.pauseProducing()  # never reads a pong
        ping = masked(0x9, b"p" * 125)
        peak = offered = 0
        while offered < 8 * BACKLOG_LIMIT and server in self.server.live:
            client.transport.write(ping * 256)
            offered += 256 * 127
            yield deferLater(reactor, 0.01, lambda: None)  # the server reads and answers the burst
            peak = max(peak, backlog(server.transport) if server.transport is not None else 0)
        self.assertLessEqual(peak, BACKLOG_LIMIT, f"{peak} bytes of pongs held for a client that does not read")
        yield wait_for(lambda: server not in self.server.live, timeout=fz.WAIT)  # the server dropped it
        self.assertIn("stopped reading", server.dropped_reason or "")
        yield self.assert_battery_answered()

    # -- 7: a fragmented message that never ends ------------------------------------------------
    @inlineCallbacks
    def test_endless_empty_continuation_frames_are_cut_off(self) -> Any:
        before = set(self.server.live)
        client = yield fz.ws_connect(self.http)
        self.addCleanup(lambda: client.transport.abortConnection() if not client.lost.called else None)
        yield client.probe("Shelly.GetDeviceInfo")
        [server] = list(self.server.live - before)
        client.transport.write(masked(0x1, b"{", fin=False) + masked(0x0, fin=False) * 5000)
        yield client.lost.addTimeout(fz.WAIT, reactor)
        self.assertIn("frames", server.dropped_reason or "")
        yield self.assert_battery_answered()

    # -- many tiny frames in one read do not stall the other transports ---------------------------
    @inlineCallbacks
    def test_a_read_full_of_tiny_frames_is_fed_in_slices(self) -> Any:
        before = set(self.server.live)
        client = yield fz.ws_connect(self.http)
        self.addCleanup(lambda: client.transport.abortConnection() if not client.lost.called else None)
        yield client.probe("Shelly.GetDeviceInfo")
        [server] = list(self.server.live - before)
        fed: list[int] = []
        real = server._dataReceived
        self.patch(server, "_dataReceived", lambda data: (fed.append(len(data)), real(data)))
        client.transport.write(masked(0x9) * 20000)  # 120 kB of empty pings
        reply = yield client.probe("Sys.GetStatus")  # answered after them, in order
        self.assertIn("result", reply)
        self.assertLessEqual(max(fed), server.input_slice)
        self.assertGreater(len(fed), 20)


