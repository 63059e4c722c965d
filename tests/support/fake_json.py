"""A fake JSON HTTP device on 127.0.0.1 replaying a captured answer (tests/fixtures/…).

Any path answers ``body`` (GET or POST) when the request carries the expected
credentials (basic or bearer), 401 otherwise; every request's method, path,
headers and body are recorded. Plain HTTP, or HTTPS with a certificate made
at test time (:class:`tests.support.fake_homewizard.Certificates`). Put it
behind :func:`tests.support.faults.wrap_site` for hangs, garbage and status
faults; :meth:`FakeJsonDevice.vanish` / :meth:`back` close and reopen its port.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.support.faults import ConnectionTracker, Plan, wrap_site


class _Answer(Resource):
    isLeaf = True

    def __init__(self, fake: FakeJsonDevice) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request: Any) -> bytes:
        fake = self.fake
        body = request.content.read() if request.content is not None else b""
        fake.requests.append({"method": request.method.decode(), "uri": request.uri.decode("latin-1"),
                              "headers": request.getAllHeaders(), "body": body})
        if fake.expected_auth is not None and request.getHeader(b"authorization") != fake.expected_auth:
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="device"')
            return b"Unauthorized"
        request.setHeader(b"content-type", b"application/json")
        return fake.answer(request) if fake.answer is not None else fake.body


class FakeJsonDevice:
    """``username``/``password`` or ``token``: the credentials it wants (none: open)."""

    def __init__(self, case: TestCase, body: bytes, *, username: str | None = None, password: str | None = None,
                 token: str | None = None, tls: Any = None) -> None:
        self.body = body
        self.answer: Callable[[Any], bytes] | None = None
        self.requests: list[dict[str, Any]] = []
        self.expected_auth: bytes | None = None
        if token is not None:
            self.expected_auth = f"Bearer {token}".encode()
        elif username is not None:
            self.expected_auth = b"Basic " + base64.b64encode(f"{username}:{password or ''}".encode())
        self.tls = tls
        self.site = Site(_Answer(self))
        self.site.noisy = False
        self.plan: Plan
        self.tracker: ConnectionTracker
        self.plan, self.tracker = wrap_site(self.site)
        self.port_number = 0
        self.port: Any = None
        self._listen()
        case.addCleanup(self.close)

    def _listen(self) -> None:
        if self.tls is not None:
            self.port = reactor.listenSSL(self.port_number, self.site, self.tls.server_options(),
                                          interface="127.0.0.1")
        else:
            self.port = reactor.listenTCP(self.port_number, self.site, interface="127.0.0.1")
        self.port_number = self.port.getHost().port

    def url(self, path: str = "/api") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port_number}{path}"

    def vanish(self) -> Deferred[Any]:
        """Cut every connection and stop listening (connections are then refused)."""
        self.plan.cleanup()
        port, self.port = self.port, None
        return self.tracker.abort_all().addCallback(lambda _: port.stopListening() if port else None)

    def back(self) -> None:
        """Listen again on the same port."""
        self._listen()

    def close(self) -> Deferred[Any]:
        self.plan.cleanup()
        if self.port is None:
            return succeed(None)
        port, self.port = self.port, None
        return self.tracker.abort_all().addCallback(lambda _: port.stopListening())
