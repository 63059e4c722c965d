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
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.web.server import Request

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
