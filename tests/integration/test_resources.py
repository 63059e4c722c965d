"""Resource bounds (issue item 10): connections, datagrams and slow clients.

A real meteremu on 127.0.0.1, real clients, and the process's own numbers:
open file descriptors (``/proc/self/fd``), resident memory (``VmRSS`` in
``/proc/self/status``), the reactor's readers (one per open socket) and
delayed calls, and weak references to every server-side WebSocket protocol
(gone after ``gc.collect()``: nothing keeps a closed connection alive).

- 1000 WebSocket connections opened and dropped, 100 at a time: some closed
  cleanly, some aborted, some dropped at the TCP level without a close
  handshake, half of them subscribed to NotifyStatus first.
- 10 000 garbage datagrams from four sockets, in bursts the socket buffer
  holds, each burst followed by a valid request that must be answered: every
  garbage datagram dropped and counted, none answered.
- A WebSocket client that never reads, while it pipelines requests or while
  notifications are pushed to it: the server must not buffer without bound.

Every wait is a Deferred with a timeout; the only polling is a zero-delay
reactor turn (``deferLater(reactor, 0)``) while the server drains.
"""

from __future__ import annotations

import gc
import json
import os
import random
import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from meteremu.compat.tcp import backlog
from tests.support import fuzz as fz
from tests.support import sample_reading, start_app, test_config
from tests.support.server_side import BACKLOG_LIMIT, SMALL_BUFFER, ServerSide, turn, wait_for
from tests.support.udp import free_udp_ports

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h", "start_time": "12:00", "seed": 3}}}
WAIT = fz.WAIT
FD_SLACK = 5
RSS_BOUND = 20 * 1024 * 1024
FLOOD = 8 * 1024 * 1024  # what the slow client is offered: 8x the limit



def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class Baseline:
    """What the process holds when idle: fds, RSS, reactor readers and delayed calls."""

    def __init__(self) -> None:
        gc.collect()
        self.fds = open_fds()
        self.rss = rss_bytes()
        self.readers = len(reactor.getReaders())
        self.delayed = len(reactor.getDelayedCalls())

    @inlineCallbacks
    def check(self, case: TestCase, what: str) -> Any:
        # A few reactor turns for closes already decided (no wall-clock sleep).
        for _ in range(20):
            if open_fds() <= self.fds + FD_SLACK and len(reactor.getReaders()) <= self.readers:
                break
            yield turn()
        gc.collect()
        fds, rss, readers = open_fds(), rss_bytes(), len(reactor.getReaders())
        fz.log.info("resources: {what}: fds {b_fds} -> {fds}, RSS {b_rss:.1f} -> {rss:.1f} MiB, "
                    "readers {b_readers} -> {readers}", what=what, b_fds=self.fds, fds=fds,
                    b_rss=self.rss / 2**20, rss=rss / 2**20, b_readers=self.readers, readers=readers)
        case.assertLessEqual(fds, self.fds + FD_SLACK, f"{what}: file descriptors {self.fds} -> {fds}")
        case.assertLessEqual(readers, self.readers, f"{what}: reactor readers {self.readers} -> {readers}")
        case.assertLess(rss - self.rss, RSS_BOUND,
                        f"{what}: RSS grew by {(rss - self.rss) / 2**20:.1f} MiB (bound {RSS_BOUND / 2**20:.0f})")
        case.assertLessEqual(len(reactor.getDelayedCalls()), self.delayed,
                             f"{what}: delayed calls left behind: {reactor.getDelayedCalls()}")


class ResourceTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def start(self, **device: Any) -> Any:
        self.server = ServerSide(self)
        self.udp_ports = free_udp_ports(2)
        # A hundred clients at once, all from 127.0.0.1: above the per-address cap of a LAN.
        config = test_config(self.mktemp(), meters=SIM,
                             server={"host": "127.0.0.1", "http_port": 0, "max_connections_per_ip": 512},
                             devices=[{"type": "shelly_pro_3em", "udp_ports": self.udp_ports, **device}])
        self.app = yield start_app(self, config)
        self.device = self.app.devices[0]
        self.hub = self.app.device_services[0].hub
        self.meter = self.app.meters["grid"]
        self.t = self.meter.latest.measured_at
        self.push()
        self.http = self.app.http_port()
        self.clients: list[fz.WsClient] = []
        self.addCleanup(self.drop_clients)  # before the app stops (cleanups run LIFO)

    def push(self, powers: tuple[float, float, float] = (2166.2, 3.6, -244.0)) -> None:
        self.t += 1.0
        self.assertTrue(self.meter.update(sample_reading(self.t, powers)))

    @inlineCallbacks
    def drop_clients(self) -> Any:
        for client in self.clients:
            if not client.lost.called and client.transport is not None:
                client.transport.abortConnection()
        yield fz.gather([c.lost.addTimeout(WAIT, reactor) for c in self.clients if not c.lost.called])
        yield self.server.all_closed()

    @inlineCallbacks
    def warm_up(self) -> Any:
        """One subscribed connection opened and closed, then the idle baseline.

        The first connection creates things once (the Site's date-cache timer,
        a reader or two); they are not per-connection costs.
        """
        client = yield self.connect()
        reply = yield client.probe("Shelly.GetDeviceInfo", src="warm-up")
        self.assertIn("result", reply)
        yield client.close()
        yield self.server.all_closed()
        return Baseline()

    @inlineCallbacks
    def connect(self) -> Any:
        client = yield fz.ws_connect(self.http)
        self.clients.append(client)
        return client

    # -- (a) 1000 WebSocket connections ---------------------------------------

    @inlineCallbacks
    def cycle(self, index: int, client: fz.WsClient) -> Any:
        """One connection's life, by ``index``: subscribe or not; close, abort or drop."""
        mode = index % 4
        if mode in (0, 3):
            reply = yield client.probe("Shelly.GetDeviceInfo", src=f"res-{index}")
            self.assertIn("result", reply)
        elif mode == 1:
            reply = yield client.probe()
            self.assertIn("result", reply)
        if mode == 0:
            yield client.close()
        elif mode in (1, 3):
            client.transport.abortConnection()
        else:
            client.transport.loseConnection()  # TCP FIN without a WebSocket close
        yield client.lost.addTimeout(WAIT, reactor)

    @inlineCallbacks
    def batch(self, start: int, size: int) -> Any:
        """``size`` connections open at once, then each goes its way.

        They are opened in waves of 25: Twisted listens with a backlog of 50,
        and a burst beyond it costs a 1 s SYN retransmission, not a bug.
        """
        clients: list[fz.WsClient] = []
        for wave in range(0, size, 25):
            opened = yield fz.gather([fz.ws_connect(self.http) for _ in range(min(25, size - wave))])
            clients.extend(opened)
            self.clients.extend(opened)
        self.assertEqual(len(self.server.live), size)
        yield fz.gather([self.cycle(start + i, c) for i, c in enumerate(clients)])
        yield self.server.all_closed()
        self.clients = [c for c in self.clients if not c.lost.called]

    @inlineCallbacks
    def test_thousand_websocket_connections_opened_and_dropped(self) -> Any:
        yield self.start()
        started = time.perf_counter()
        total, size = 1000, 100
        # Warm-up with one batch of the same size: imports, caches, the allocator's
        # high-water mark for 100 open connections (RSS then stays flat).
        yield self.batch(-size, size)
        baseline = Baseline()
        for start in range(0, total, size):
            yield self.batch(start, size)
            self.assertEqual(self.server.live, set())
        self.assertEqual(self.hub.clients, [], "subscribers left in the hub after their connections closed")
        leaked = self.server.alive_after_gc()
        self.assertEqual(leaked, [], f"{len(leaked)} closed server-side WebSocket protocols still referenced")
        yield baseline.check(self, "1000 WebSocket connections")
        # Still serving.
        client = yield self.connect()
        reply = yield client.probe()
        self.assertIn("result", reply)
        yield client.close()
        fz.log.info("resources: 1000 WebSocket connections in {s:.1f} s", s=time.perf_counter() - started)

    # -- (b) 10k garbage datagrams --------------------------------------------

    @staticmethod
    def garbage(rng: random.Random, max_bytes: int) -> bytes:
        """One datagram the device must drop: never a frame with both an id and a method."""
        valid = b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}'
        kind = rng.randrange(11)
        if kind == 0:
            return rng.randbytes(rng.randrange(0, 200))
        if kind == 1:
            return b"{" * rng.randrange(1, 300)
        if kind == 2:
            return b'{"id":1,"method":"\xff\xfe' + rng.randbytes(8) + b'"}'
        if kind == 3:
            return rng.choice([b"[1,2,3]", b'"EM.GetStatus"', b"123", b"null", b"true", b"{}", b"[]"])
        if kind == 4:
            return b'{"method":"EM.GetStatus","params":{"id":0}}'
        if kind == 5:
            return b'{"id":null,"method":"EM.GetStatus"}'
        if kind == 6:
            return b'{"id":%d}' % rng.randrange(10**6)
        if kind == 7:
            return valid[:rng.randrange(0, len(valid) - 1)]
        if kind == 8:
            return valid + b"x" * (max_bytes - len(valid) + 1 + rng.randrange(0, 1500))  # oversize
        if kind == 9:
            return b""
        return rng.randbytes(rng.randrange(1, 40)) + valid

    @inlineCallbacks
    def test_ten_thousand_garbage_datagrams(self) -> Any:
        yield self.start()
        listener = self.app.device_services[0].udp[0].protocol
        max_bytes = self.device.options.udp_max_bytes
        rng = random.Random(20240610)
        datagrams = []
        while len(datagrams) < 10_000:
            data = self.garbage(rng, max_bytes)
            frame = fz.decode_or_none(data) if len(data) <= max_bytes else None
            if isinstance(frame, dict) and "method" in frame and frame.get("id") is not None:
                continue  # by chance a real request (random bytes + valid frame): not garbage
            datagrams.append(data)
        senders = [fz.UdpClient() for _ in range(4)]
        for proto in senders:
            port = reactor.listenUDP(0, proto, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
        warm = yield senders[0].probe(self.udp_ports[0])
        self.assertIn("result", warm)
        baseline = Baseline()
        started = time.perf_counter()
        before = dict(listener.dropped)
        sent = 0
        for n, chunk in enumerate(fz_chunks(datagrams)):
            for i, data in enumerate(chunk):
                senders[i % len(senders)].send(data, self.udp_ports[0])
            sent += len(chunk)
            reply = yield senders[n % len(senders)].probe(self.udp_ports[0])  # bounded rate: one burst in flight
            self.assertIn("result", reply)
        self.assertEqual(sent, 10_000)
        dropped = {k: v - before.get(k, 0) for k, v in listener.dropped.items()}
        self.assertEqual(set(dropped) - {"garbage", "oversize"}, set(), f"unexpected drop reasons: {dropped}")
        self.assertEqual(sum(dropped.values()), 10_000,
                         f"garbage datagrams not all dropped and counted (lost in the socket buffer?): {dropped}")
        probes = sum(len(s.probes) for s in senders)
        self.assertEqual(listener.answered, probes, "a garbage datagram was answered")
        received = [raw for s in senders for raw in s.received]
        self.assertEqual(len(received), probes)
        self.assertTrue(all(json.loads(raw)["id"].startswith("probe-") for raw in received))
        yield baseline.check(self, "10k garbage datagrams")
        fz.log.info("resources: 10k garbage datagrams in {s:.1f} s ({d})", s=time.perf_counter() - started,
                    d=dropped)

    # -- (c) a client that never reads ------------------------------------------

    @inlineCallbacks
    def slow_client(self, src: str | None = None) -> Any:
        """A connected client that stops reading, with both ends' kernel buffers shrunk.

        Returns ``(client, server-side protocol)``.
        """
        before = set(self.server.live)
        client = yield self.connect()
        reply = yield client.probe("Shelly.GetDeviceInfo", src=src)
        self.assertIn("result", reply)
        if src is not None:
            yield wait_for(lambda: any(f.get("method") == "NotifyFullStatus" for f in client.frames))
        [server] = list(self.server.live - before)
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        server.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        client.transport.pauseProducing()  # never reads again
        return client, server

    def assertBounded(self, peak: int, offered: int, server: Any, what: str) -> None:
        closed = server not in self.server.live
        fz.log.info("resources: {what}: offered {offered} bytes, peak server backlog {peak} bytes, closed={closed}",
                    what=what, offered=offered, peak=peak, closed=closed)
        self.assertTrue(
            peak <= BACKLOG_LIMIT,
            f"PRODUCT GAP: {what}: the server buffered {peak / 2**20:.1f} MiB in user space for one client "
            f"that does not read, {100 * peak / max(offered, 1):.0f}% of the {offered / 2**20:.1f} MiB it "
            f"offered so far, and keeps growing with it (test bound {BACKLOG_LIMIT / 2**20:.0f} MiB). "
            f"Suggested fix in meteremu/devices/shelly/ws.py: register the protocol as a streaming producer "
            f"on its transport (self.transport.registerProducer(self, True)); on pauseProducing stop reading "
            f"from that client (self.transport.pauseProducing()) and let NotifyHub skip paused clients "
            f"(send NotifyFullStatus on resumeProducing); or close a client whose transport backlog exceeds "
            f"a limit (dropConnection(abort=True)).")

    @inlineCallbacks
    def test_client_that_never_reads_its_answers(self) -> Any:
        yield self.start()
        baseline = yield self.warm_up()
        client, server = yield self.slow_client()
        request = b'{"id":"s","method":"Shelly.GetStatus"}'
        first, start_offered = self.server.messages, server.offered
        peak = sent = 0
        while server.offered - start_offered < FLOOD and server in self.server.live and peak <= BACKLOG_LIMIT:
            for _ in range(100):
                client.sendMessage(request)
            sent += 100
            # Let the server read and answer this burst. It may also stop reading
            # (backpressure): then nothing moves any more, and that is the bound.
            moved = yield wait_for(lambda sent=sent: self.server.messages - first >= sent
                                    or server not in self.server.live,
                                    progress=lambda: (self.server.messages, backlog(server.transport)))
            peak = max(peak, backlog(server.transport))
            if not moved:
                break
        self.assertBounded(peak, server.offered - start_offered, server, "pipelined Shelly.GetStatus never read")
        client.transport.abortConnection()
        yield client.lost.addTimeout(WAIT, reactor)
        yield self.server.all_closed()
        client = server = None
        yield baseline.check(self, "a client that never reads its answers")

    @inlineCallbacks
    def test_subscriber_that_never_reads_notifications(self) -> Any:
        yield self.start()
        baseline = yield self.warm_up()
        client, server = yield self.slow_client(src="slow-1")
        self.assertIn(server, self.hub.clients)
        # The throttle is driven directly (one NotifyStatus per reading); with the
        # hub's own timer off, no flush is left scheduled behind our back.
        self.patch(self.hub, "_schedule", lambda: None)
        start_offered = server.offered
        peak = 0
        rng = random.Random(7)
        for _ in range(400):  # at most 20 000 readings
            if server.offered - start_offered >= FLOOD or server not in self.server.live or peak > BACKLOG_LIMIT:
                break
            for _ in range(50):
                self.push((1000.0 + rng.uniform(-900, 900), 500.0 + rng.uniform(-400, 400),
                           -244.0 + rng.uniform(-200, 200)))
                self.hub.flush()
            yield turn()
            peak = max(peak, backlog(server.transport))
        self.assertBounded(peak, server.offered - start_offered, server,
                           "NotifyStatus to a subscriber that never reads")
        client.transport.abortConnection()
        yield client.lost.addTimeout(WAIT, reactor)
        yield self.server.all_closed()
        self.assertEqual(self.hub.clients, [])
        client = server = None
        yield baseline.check(self, "a subscriber that never reads")


def fz_chunks(datagrams: list[bytes]) -> list[list[bytes]]:
    """Bursts of at most 100 datagrams / 48 kB: what a 208 kB socket buffer surely holds."""
    chunks: list[list[bytes]] = [[]]
    size = 0
    for data in datagrams:
        if chunks[-1] and (size + len(data) > 48_000 or len(chunks[-1]) >= 100):
            chunks.append([])
            size = 0
        chunks[-1].append(data)
        size += len(data) + 768  # kernel overhead per datagram (skb truesize)
    return chunks
