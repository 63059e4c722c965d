"""Fault injection for the upstream-fault tests (issue item 9), on 127.0.0.1 only.

* :class:`Plan` + :func:`wrap_site`: put any ``twisted.web`` Site (the fake
  Envoy, Home Assistant or HomeWizard) behind a gate that, per request, either
  lets the fake answer or injects a fault: ``hang`` (accept, never answer),
  ``midbody`` (headers and half the body, then close), ``garbage`` (200 with a
  body that is not what the endpoint sends), ``status`` (401, 500, …) or
  ``slow`` (the normal answer after a delay).
* :class:`ConnectionTracker`: every server-side connection of a Site, so a
  test can make the upstream *vanish* (abort them all and stop listening)
  and clean up without a dirty reactor.
* :class:`TelegramStream`: a ser2net stand-in that streams a DSMR telegram
  with increasing timestamps, and can hang, send garbage, cut a telegram in
  the middle, vanish and come back on the same port.
* :class:`UdpProber`: a battery that polls the device over UDP in the
  background for the whole test, records every round trip, and answers
  ``ask`` for single probes (``None`` when no reply came: the ``on_stale:
  error`` silence).
* :func:`wait_until`: a bounded wait on any condition (a LoopingCall polling
  it, a hard timeout that fails with a description of the state) — the tests
  never sleep a fixed time to wait for something.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import FailTest
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET

from tests.support.fake_homeassistant import HAServerProtocol
from tests.support.p1 import retime


def free_tcp_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# -- waiting ---------------------------------------------------------------------------


def wait_until(check: Callable[[], bool], timeout: float, what: Callable[[], str] | str,
               step: float = 0.02) -> Deferred[float]:
    """Fires with the seconds it took once ``check()`` holds; fails after ``timeout``."""
    started = reactor.seconds()
    d: Deferred[float] = Deferred()

    def expire() -> None:
        if loop.running:
            loop.stop()
        if not d.called:
            text = what() if callable(what) else what
            d.errback(FailTest(f"timed out after {timeout:g} s waiting for {text}"))

    timer = reactor.callLater(timeout, expire)

    def poll() -> None:
        if d.called:
            return
        try:
            ok = check()
        except Exception as exc:  # noqa: BLE001 - reported as the wait's failure
            loop.stop()
            timer.cancel()
            d.errback(exc)
            return
        if ok:
            loop.stop()
            if timer.active():
                timer.cancel()
            d.callback(reactor.seconds() - started)

    loop = LoopingCall(poll)
    loop.start(step, now=True)
    return d


# -- HTTP faults -------------------------------------------------------------------------

GARBAGE = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n\x00\xff{\"half\": [1, 2"


class Plan:
    """What the gate does with the next requests (see the module docstring)."""

    MODES = ("ok", "hang", "midbody", "garbage", "status", "slow")

    def __init__(self) -> None:
        self.mode = "ok"
        self.status = 500
        self.delay = 0.0
        self.body = GARBAGE
        self.paths: tuple[str, ...] | None = None  # path prefixes the fault applies to (None: all)
        self.hung: list[Any] = []
        self.timers: list[Any] = []
        self.requests = 0
        self.faulted = 0

    def set(self, mode: str, *, status: int = 500, delay: float = 0.0, body: bytes = GARBAGE,
            paths: tuple[str, ...] | None = None) -> None:
        assert mode in self.MODES, mode
        self.mode, self.status, self.delay, self.body, self.paths = mode, status, delay, body, paths

    def clear(self) -> None:
        """Back to normal answers; requests still hanging are cut (their client gave up)."""
        self.mode = "ok"
        self.release()

    def release(self) -> None:
        hung, self.hung = self.hung, []
        for request in hung:
            _abort(request)

    def cleanup(self) -> None:
        self.mode = "ok"
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        self.timers.clear()
        self.release()

    def applies(self, request: Any) -> bool:
        if self.mode == "ok":
            return False
        if self.paths is None:
            return True
        path = request.path.decode("latin-1")
        return any(path.startswith(prefix) for prefix in self.paths)


def _abort(request: Any) -> None:
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if transport is not None and not getattr(request, "_disconnected", False):
        transport.abortConnection()


class _Gate(Resource):
    isLeaf = True

    def __init__(self, inner: Resource, plan: Plan) -> None:
        super().__init__()
        self.inner, self.plan = inner, plan

    def _target(self, request: Any) -> Resource:
        return getChildForRequest(self.inner, request)

    def render(self, request: Any) -> Any:
        plan = self.plan
        plan.requests += 1
        if not plan.applies(request):
            return self._target(request).render(request)
        plan.faulted += 1
        if plan.mode == "hang":
            plan.hung.append(request)
            return NOT_DONE_YET
        if plan.mode == "status":
            request.setResponseCode(plan.status)
            request.setHeader(b"content-type", b"text/html")
            return b"<html><body>%d</body></html>" % plan.status
        if plan.mode == "garbage":
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"application/json")
            return plan.body
        if plan.mode == "slow":
            timer = reactor.callLater(plan.delay, self._late, request)
            plan.timers.append(timer)
            return NOT_DONE_YET
        # midbody: the real status and headers, a Content-Length, half the body, then close
        body = self._target(request).render(request)
        if not isinstance(body, bytes):
            return body
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body[: max(1, len(body) // 2)])
        transport = request.channel.transport
        # The HTTP channel is registered as the transport's producer; TLS would
        # wait for it to go away before closing. Flush what was written, close.
        transport.unregisterProducer()
        transport.loseConnection()
        return NOT_DONE_YET

    def _late(self, request: Any) -> None:
        self.plan.timers = [t for t in self.plan.timers if t.active()]
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.render(self._target(request))


class FaultyResource(Resource):
    """Routes every request through a :class:`_Gate` in front of ``inner``."""

    def __init__(self, inner: Resource, plan: Plan) -> None:
        super().__init__()
        self.inner, self.plan = inner, plan

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        # The Site consumed one path segment to get here: give it back so that
        # the inner tree routes the whole path itself.
        request.postpath.insert(0, request.prepath.pop())
        return _Gate(self.inner, self.plan)

    def render(self, request: Any) -> Any:
        return _Gate(self.inner, self.plan).render(request)


class ConnectionTracker:
    """Every open server-side connection of a Factory (a Site), to cut them all."""

    def __init__(self, factory: Any) -> None:
        self.open: dict[Any, Deferred[None]] = {}
        original = factory.buildProtocol

        def build(addr: Any) -> Any:
            proto = original(addr)
            if proto is None:
                return proto
            lost: Deferred[None] = Deferred()
            self.open[proto] = lost
            previous = proto.connectionLost

            def connection_lost(reason: Any, proto: Any = proto, previous: Any = previous) -> None:
                try:
                    previous(reason)
                finally:
                    done = self.open.pop(proto, None)
                    if done is not None and not done.called:
                        done.callback(None)

            proto.connectionLost = connection_lost
            return proto

        factory.buildProtocol = build

    def abort_all(self) -> Deferred[Any]:
        """Abort every connection still served over HTTP; fires once they are gone.

        A connection upgraded to a WebSocket was handed to another protocol
        (autobahn clears the channel's transport): it is not ours to close.
        """
        waits = []
        for proto, lost in list(self.open.items()):
            channel = getattr(proto, "_channel", proto)
            transport = getattr(channel, "transport", None)
            if transport is None:
                del self.open[proto]
                continue
            waits.append(lost)
            transport.abortConnection()
        if not waits:
            return succeed(None)
        return DeferredList(waits).addTimeout(5, reactor)


def wrap_site(site: Any) -> tuple[Plan, ConnectionTracker]:
    """Put ``site``'s resource tree behind a fault gate; track its connections."""
    site = getattr(site, "wrappedFactory", site)  # listenSSL: the Site inside the TLS factory
    plan = Plan()
    site.resource = FaultyResource(site.resource, plan)
    return plan, ConnectionTracker(site)


# -- Home Assistant: pongs that can be late ---------------------------------------------------


class SlowPongProtocol(HAServerProtocol):
    """The fake HA, answering pings after ``fake.pong_delay`` seconds."""

    def cmd_ping(self, msg_id: int, message: dict[str, Any]) -> None:
        delay = getattr(self.fake, "pong_delay", 0.0)
        if not self.fake.answer_pings:
            return
        if delay <= 0:
            self.send({"id": msg_id, "type": "pong"})
            return

        def late() -> None:
            if self.state == self.STATE_OPEN:
                self.send({"id": msg_id, "type": "pong"})

        timer = reactor.callLater(delay, late)
        self.closed.addBoth(lambda r: timer.cancel() if timer.active() else None)


# -- DSMR: a telegram stream with faults -----------------------------------------------------


class _StreamClient(Protocol):
    def connectionMade(self) -> None:
        self.factory.stream.clients.append(self)
        self.factory.stream.connections += 1

    def connectionLost(self, reason: Any = None) -> None:
        stream = self.factory.stream
        if self in stream.clients:
            stream.clients.remove(self)
        waiting, stream._lost = stream._lost, []
        for d in waiting:
            d.callback(None)


class TelegramStream:
    """Streams ``telegram`` every ``period`` s, re-timed ``base + n`` (always new).

    ``mode``: ``ok`` (valid telegrams), ``hang`` (connected, silent),
    ``garbage`` (line noise and telegrams with a wrong CRC, never a valid one).
    """

    def __init__(self, telegram: bytes, period: float, base: float | None = None) -> None:
        self.telegram = telegram
        self.period = period
        self.base = base if base is not None else time.time() - 100_000
        self.seq = 0
        self.mode = "ok"
        self.clients: list[_StreamClient] = []
        self.connections = 0
        self.sent = 0
        self._lost: list[Deferred[None]] = []
        self.factory = Factory.forProtocol(_StreamClient)
        self.factory.noisy = False
        self.factory.stream = self  # type: ignore[attr-defined]
        self.port: Any = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.number = self.port.getHost().port
        self.loop = LoopingCall(self.tick)
        self.loop.start(period, now=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.number}"

    def next_telegram(self) -> bytes:
        self.seq += 1
        return retime(self.telegram, self.base + self.seq)

    def tick(self) -> None:
        if not self.clients or self.mode == "hang":
            return
        if self.mode == "garbage":
            bad = self.next_telegram()
            bad = bad[:-6] + (b"0000" if bad[-6:-2] != b"0000" else b"FFFF") + b"\r\n"  # wrong CRC
            self.write(b"\x00\xff line noise !!\r\n/half a telegram\r\n" + bad)
            return
        self.write(self.next_telegram())
        self.sent += 1

    def write(self, data: bytes) -> None:
        for client in list(self.clients):
            client.transport.write(data)

    def cut_mid_telegram(self) -> None:
        """Half of the next telegram, then the connection drops."""
        half = self.next_telegram()
        self.write(half[: len(half) // 2])
        for client in list(self.clients):
            client.transport.loseConnection()

    def drop(self) -> Deferred[None]:
        waits = []
        for client in list(self.clients):
            d: Deferred[None] = Deferred()
            self._lost.append(d)
            waits.append(d)
            client.transport.abortConnection()
        return DeferredList(waits) if waits else succeed(None)

    def vanish(self) -> Deferred[Any]:
        """Connections cut and the port closed: connects are refused."""
        port, self.port = self.port, None
        d = self.drop()
        if port is not None:
            d.addCallback(lambda _: port.stopListening())
        return d

    def back(self) -> None:
        """Listening again on the same port."""
        if self.port is None:
            self.port = reactor.listenTCP(self.number, self.factory, interface="127.0.0.1")

    def close(self) -> Deferred[Any]:
        if self.loop.running:
            self.loop.stop()
        return self.vanish()


# -- a battery on UDP -------------------------------------------------------------------------


class UdpProber(DatagramProtocol):
    """Polls devices over UDP and records every round trip (see the module docstring)."""

    def __init__(self) -> None:
        self.ids = 0
        self.pending: dict[str, tuple[float, str, int, Deferred[Any] | None]] = {}
        self.rtts: list[tuple[str, int, float]] = []  # (method, port, seconds)
        self.em_results: list[tuple[int, dict[str, Any]]] = []  # (port, EM.GetStatus result)
        self.background_sent = 0
        self.loop: LoopingCall | None = None
        self.ticks = 0

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        now = time.perf_counter()
        try:
            frame = json.loads(data)
        except ValueError:
            return
        entry = self.pending.pop(frame.get("id"), None) if isinstance(frame, dict) else None
        if entry is None:
            return
        sent, method, port, d = entry
        self.rtts.append((method, port, now - sent))
        if method == "EM.GetStatus" and isinstance(frame.get("result"), dict):
            self.em_results.append((port, frame["result"]))
        if d is not None and not d.called:
            d.callback(frame)

    def send(self, method: str, port: int, d: Deferred[Any] | None = None) -> str:
        self.ids += 1
        frame_id = f"p{self.ids}"
        self.pending[frame_id] = (time.perf_counter(), method, port, d)
        self.transport.write(json.dumps({"id": frame_id, "method": method, "params": {"id": 0}}).encode(),
                             ("127.0.0.1", port))
        return frame_id

    def ask(self, method: str, port: int, timeout: float = 0.5) -> Deferred[Any]:
        """The reply frame, or None when none came within ``timeout``."""
        d: Deferred[Any] = Deferred()
        self.send(method, port, d)
        timer = reactor.callLater(timeout, lambda: d.called or d.callback(None))
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d

    def start(self, sys_port: int, em_ports: tuple[int, ...] = (), every: float = 0.05) -> None:
        """Sys.GetStatus to ``sys_port`` every ``every`` s (must always be answered);
        EM.GetStatus to ``em_ports`` every fourth tick (answered or not, per policy)."""

        def tick() -> None:
            self.ticks += 1
            self.send("Sys.GetStatus", sys_port)
            self.background_sent += 1
            if self.ticks % 4 == 0:
                for port in em_ports:
                    self.send("EM.GetStatus", port)

        self.loop = LoopingCall(tick)
        self.loop.start(every, now=True)

    def stop(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()

    def unanswered(self, method: str, older_than: float) -> list[float]:
        """Ages of the ``method`` probes still waiting after ``older_than`` seconds."""
        now = time.perf_counter()
        return [now - sent for sent, m, _, _ in self.pending.values() if m == method and now - sent > older_than]
