"""Twisted Web request bodies, bounded before they are read.

twisted.web reads a whole request body (to memory, or to a temporary file
beyond 100 KiB) before any resource sees the request: a 1 GiB ``POST /rpc``
is spooled to disk before it can be refused, and a WebSocket upgrade request
that carries a body hands it all to the WebSocket parser in one call. Twisted
has no public hook between "headers received" and "body read", so
:class:`BoundedRequest` overrides two methods its documentation calls "not
intended for users" (``Request.gotLength``, ``Request.handleContentChunk``)
and reads the request path from ``HTTPChannel._path`` (headers are parsed,
the request line is known, the Request has no ``uri`` yet). Checked with
Twisted 24.7 to 26.10; ``tests/unit/test_compat.py`` and ``tests/integration/test_compat.py`` holds the contract.

A body over the limit for its path (``Content-Length`` at once, or while a
chunked body arrives) and any body on an ``Upgrade`` request are answered
with one short error and the connection is closed without reading further
(``loseConnection`` stops reading at once).

:class:`BoundedChannel` is the connection side (issue #22, items 5 and 9):

* **Back-pressure across pipelined requests.** ``HTTPChannel`` pauses
  reading when the transport's send buffer fills, but only when it is *not*
  handling a request (``pauseProducing``: ``if not self._handlingRequest``),
  and in ``requestDone`` it resumes reading only if the transport is not
  full, without pausing it when it is. A response is always written while
  its request is being handled, so the pause never happens: a client that
  pipelines requests and reads no answers makes the channel parse, answer
  and queue without end (4 connections: +365 MB). Here a request that ends
  with the send buffer full is *held*: reading stays paused, the pipelined
  bytes stay unparsed, until the transport has sent what it holds
  (``resumeProducing``); a client that does not read for ``idle_timeout``
  is dropped. And at most ``PIPELINE_BURST`` pipelined requests are answered
  per reactor turn: one 64 KiB read holds about 1,500 requests, and a
  battery's UDP poll waited behind all of them (p99 115 ms in bench/attacks.py).
* **Deadlines** instead of Twisted's 12-hour idle timeout (reset by every
  byte, so one byte every few seconds kept a connection forever): a request
  must arrive whole (head and body) within ``header_timeout`` of its first
  byte (of the connection, for the first request) or is answered ``408``;
  between requests a connection may stay idle ``idle_timeout``.
* A :class:`~meteremu.connections.Tracked` entry in the connection registry
  (caps, eviction), released when the connection goes, marked served when a
  request completes; TCP keep-alive.

Private names used besides the two above (checked with Twisted 26.10):
``HTTPChannel._waitingForTransport``, ``_handlingRequest``,
``_networkProducer``, ``persistent``, and ``requestDone``,
``allContentReceived`` (public methods, "not intended for users").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from meteremu.compat.tcp import release_buffers
from meteremu.connections import ConnectionLimits, Tracked, keepalive
from meteremu.ratelog import RateLimitedLog

DEFAULT_LIMIT = 1024  # routes that take no body (a stray "{}" is tolerated)

TOO_LARGE = "too large"
UPGRADE_WITH_BODY = "upgrade with a body"

Refusal = Callable[[bytes, str, int], bytes]
"""``(path, what, limit) -> the JSON body of the refusal`` (``what``: TOO_LARGE or UPGRADE_WITH_BODY)."""


def plain_refusal(path: bytes, what: str, limit: int) -> bytes:
    if what == UPGRADE_WITH_BODY:
        return json.dumps({"error": "an upgrade request carries no body"}).encode()
    return json.dumps({"error": f"the request body is larger than {limit} bytes"}).encode()


BodyLimit = Callable[[bytes], tuple[int, Refusal]]
"""``path -> (the largest body this path accepts, how a refusal reads there)``."""


class BoundedRequest(Request):
    """A Request that refuses a body too large for its path before reading it."""

    body_limit: BodyLimit = staticmethod(lambda path: (DEFAULT_LIMIT, plain_refusal))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._body_seen = 0
        self._path = b""
        self._limit: int = DEFAULT_LIMIT
        self._refusal: Refusal = plain_refusal

    def gotLength(self, length: int | None) -> None:
        self._path = (getattr(self.channel, "_path", b"") or b"").split(b"?", 1)[0]
        self._limit, self._refusal = self.body_limit(self._path)
        chunked = self.requestHeaders.hasHeader(b"transfer-encoding")
        if self.requestHeaders.hasHeader(b"upgrade") and (length or chunked):
            self._refuse(400, UPGRADE_WITH_BODY)
            return
        if length is not None and length > self._limit:
            self._refuse(413, TOO_LARGE)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_seen += len(data)
        if self._body_seen > self._limit:
            self._refuse(413, TOO_LARGE)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self, code: int, what: str) -> None:
        """Answer at once and close; the rest of the body is never read."""
        self._refused = True
        reason = {400: b"Bad Request", 413: b"Content Too Large"}[code]
        body = self._refusal(self._path, what, self._limit)
        transport = self.channel.transport if self.channel is not None else None
        if transport is None:
            return
        transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                        b"Connection: close\r\n\r\n%s" % (code, reason, len(body), body))
        transport.loseConnection()


def bounded(body_limit: BodyLimit) -> type[BoundedRequest]:
    """A :class:`BoundedRequest` class with its limits (a Site's ``requestFactory``)."""
    return type("Request", (BoundedRequest,), {"body_limit": staticmethod(body_limit)})


TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
             b"Connection: close\r\n\r\n%s")
TIMED_OUT_BODY = json.dumps({"error": "the request did not arrive in time"}).encode()
PIPELINE_BURST = 4  # pipelined requests answered per reactor turn (each costs about 0.3 ms)
CLOSING_GRACE = 5.0  # s for a closing connection to send its last answer before it is aborted

# What a connection is doing, for its deadline.
WAITING = "waiting"  # for the first byte of a request
RECEIVING = "receiving"  # a request has begun and is not complete
HANDLING = "handling"  # the application has the request (its own business how long)
HELD = "held"  # answered, but the client does not read: reading is paused


class BoundedChannel(HTTPChannel):
    """An HTTPChannel with deadlines, a registry entry, and back-pressure for pipelined requests."""

    transport: Any  # a TCP transport (abortConnection, producers); Twisted types it ITransport | None

    limits: ConnectionLimits = ConnectionLimits()
    tracked: Tracked | None = None
    warnings: RateLimitedLog | None = None
    state = WAITING
    _deadline: IDelayedCall | None = None
    _held: Request | None = None
    _burst = 0  # pipelined requests answered in this reactor turn

    def connectionMade(self) -> None:
        super().connectionMade()
        keepalive(self.transport)
        if self.tracked is not None:
            self.tracked.attach(self)
        # A first request must arrive whole within header_timeout of connecting.
        self._arm(self.limits.header_timeout, self._late)

    def dataReceived(self, data: bytes) -> None:
        if self.state == WAITING and data:
            self.state = RECEIVING
            if self.tracked is None or self.tracked.served:  # the first request's deadline runs already
                self._arm(self.limits.header_timeout, self._late)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self.state = HANDLING
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        if self.tracked is not None:
            self.tracked.mark_served()
        if self.persistent and self.transport is not None:
            if self._waitingForTransport:
                # The client is not reading its answers: read and parse nothing
                # more from it until the transport has sent what it holds.
                self.state, self._held = HELD, request
                self._networkProducer.pauseProducing()
                self._arm(self.limits.idle_timeout, self._stalled)
                return
            if self._dataBuffer or self._unparsed():  # pipelined requests wait
                self._burst += 1
                if self._burst >= PIPELINE_BURST:
                    # Let the reactor turn: other clients (a battery's UDP poll)
                    # must not wait for a whole read of pipelined requests.
                    self.state, self._held = HELD, request
                    self._networkProducer.pauseProducing()
                    self.callLater(0, self._next_turn)
                    return
            else:
                self._burst = 0
        self.state = WAITING
        # Idle between requests; a closing connection (not persistent) gets
        # as long to take its last answer.
        self._arm(self.limits.idle_timeout, self._late if self.persistent else self._stalled)
        super().requestDone(request)

    def resumeProducing(self) -> None:
        super().resumeProducing()
        held, self._held = self._held, None
        if held is not None and self.transport is not None:
            self.requestDone(held)

    def _unparsed(self) -> bool:
        """Bytes LineReceiver has read and not parsed yet (its ``_buffer``)."""
        pending: Any = getattr(self, "_buffer", b"")
        return bool(pending)

    def _next_turn(self) -> None:
        self._burst = 0
        if not self._waitingForTransport:  # else resumeProducing releases it
            self.resumeProducing()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._disarm()
        self._held = None
        if self.tracked is not None:
            self.tracked.release()
        super().connectionLost(reason)
        # Pipelined bytes and unsent answers go now, not at the next full GC (see release_buffers).
        self._dataBuffer = []
        self._buffer = b""
        release_buffers(self.transport)

    def detach(self) -> Tracked | None:
        """The connection is handed to another protocol (WebSocket): stop watching it, hand over the entry."""
        self._disarm()
        tracked, self.tracked = self.tracked, None
        if tracked is not None:
            tracked.mark_served()
        return tracked

    # -- deadlines -------------------------------------------------------------------------
    def _arm(self, delay: float, expired: Any) -> None:
        self._disarm()
        self._deadline = self.callLater(delay, expired)

    def _disarm(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _late(self) -> None:
        """No request (or not all of it) in time: 408 if one had begun, then close."""
        self._deadline = None
        transport = self.transport
        if transport is None or self.state not in (WAITING, RECEIVING):
            return
        if self.state == RECEIVING and not getattr(transport, "disconnecting", False):
            self._warn("late", "closing slow HTTP clients: request not complete after {timeout:g} s (e.g. {peer})",
                       timeout=self.limits.header_timeout)
            transport.write(TIMED_OUT % (len(TIMED_OUT_BODY), TIMED_OUT_BODY))
        elif self.tracked is not None and not self.tracked.served:
            self._warn("silent", "closing HTTP connections that sent no request within {timeout:g} s (e.g. {peer})",
                       timeout=self.limits.header_timeout)
        transport.loseConnection()
        self._arm(CLOSING_GRACE, self._stalled)

    def _stalled(self) -> None:
        """The client has not read its answers for idle_timeout: drop it."""
        self._deadline = None
        if self.transport is not None:
            self._warn("stalled", "dropping HTTP clients that do not read their answers (e.g. {peer})")
            self.transport.abortConnection()

    def _warn(self, kind: str, format: str, **fields: Any) -> None:
        if self.warnings is not None:
            peer = self.transport.getPeer() if self.transport is not None else None
            self.warnings.warn(kind, format, peer=getattr(peer, "host", "?"), **fields)
