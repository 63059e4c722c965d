"""The server side of meteremu's WebSocket transport, watched from a test.

:class:`ServerSide` patches the device's WebSocket factory so a test sees
every server-side protocol (live set, weak references, messages received);
:func:`wait_for` turns the reactor until a condition holds (bounded).
"""

from __future__ import annotations

import gc
import time
import weakref
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from meteremu.devices.shelly import ws as shelly_ws
from tests.support import fuzz as fz

WAIT = fz.WAIT
# The most a server may hold in user space for one client that does not read.
BACKLOG_LIMIT = 1024 * 1024
SMALL_BUFFER = 8192  # kernel socket buffers shrunk, so the backlog shows up in user space


def turn() -> Deferred[None]:
    """One reactor iteration (lets sockets drain and callbacks run)."""
    return deferLater(reactor, 0, lambda: None)


class ServerSide:
    """Every server-side WebSocket protocol: live set, weak references, message count.

    Patches the device factory's protocol with a subclass that only records
    connectionMade/onMessage/connectionLost around the real implementation.
    """

    def __init__(self, case: TestCase) -> None:
        self.live: set[Any] = set()
        self.refs: list[weakref.ref[Any]] = []
        self.messages = 0
        self._waiters: list[Deferred[None]] = []
        tracker = self

        class Tracked(shelly_ws.ShellyWebSocketProtocol):
            def connectionMade(self) -> None:
                tracker.live.add(self)
                tracker.refs.append(weakref.ref(self))
                super().connectionMade()

            offered = 0  # bytes of messages the server tried to send on this connection

            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                tracker.messages += 1
                super().onMessage(payload, isBinary)

            def sendMessage(self, payload: bytes, *args: Any, **kw: Any) -> None:
                self.offered += len(payload)
                super().sendMessage(payload, *args, **kw)

            def connectionLost(self, reason: Any) -> None:
                try:
                    super().connectionLost(reason)
                finally:
                    tracker.live.discard(self)
                    tracker._check()

        case.patch(shelly_ws.ShellyWebSocketFactory, "protocol", Tracked)

    def _check(self) -> None:
        if not self.live:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def all_closed(self, timeout: float = WAIT) -> Deferred[None]:
        if not self.live:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d.addTimeout(timeout, reactor)

    def alive_after_gc(self) -> list[Any]:
        gc.collect()
        return [p for p in (r() for r in self.refs) if p is not None]


@inlineCallbacks
def wait_for(predicate: Any, progress: Any = None, timeout: float = 10.0) -> Any:
    """Turn the reactor until ``predicate()`` (fires True); bounded by ``timeout`` s of wall time.

    With ``progress``, fire False instead once ``progress()`` has not changed
    for 0.5 s: the server stopped reading or writing, a state to measure, not
    to wait out.
    """
    deadline = time.monotonic() + timeout
    last, changed = None, time.monotonic()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        if progress is not None:
            now = progress()
            if now != last:
                last, changed = now, time.monotonic()
            elif time.monotonic() - changed > 0.5:
                return False
        yield turn()
    return True
