"""The HTTP client room (``meteremu.httpclient``), the failure vocabulary
(``meteremu.failures``) and the cheap parts of ``meteremu.tls``.

The client runs against a real ``twisted.web`` server on 127.0.0.1 port 0;
the whole-request timeout runs on a ``Clock`` so no test waits for it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from meteremu.failures import describe
from meteremu.httpclient import BodyTooLarge, HTTPClient


class _Pages(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.stalled: list[Any] = []
        self.gone: list[Deferred[None]] = []

    def render(self, request: Any) -> Any:
        path = request.path
        if path == b"/big":
            return b"x" * 50_000
        if path == b"/missing":
            request.setResponseCode(404)
            return b"e" * 100_000
        if path == b"/stall":
            request.setHeader(b"content-length", b"100")
            request.write(b"{")  # headers and one byte, then nothing
            self.stalled.append(request)
            closed = request.notifyFinish()
            closed.addErrback(lambda _: None)
            self.gone.append(closed)
            return NOT_DONE_YET
        request.setHeader(b"X-Answer", b"42")
        return b'{"ok": true}'


class ClientTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.pages = _Pages()
        site = Site(self.pages)
        site.noisy = False
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.clock = Clock()
        self.client = HTTPClient(reactor, 5.0, clock=self.clock)
        self.addCleanup(self.client.close)

    @inlineCallbacks
    def test_answer_with_headers_and_body(self) -> Any:
        result = yield self.client.request("GET", self.base + "/")
        self.assertEqual((result.status, result.body), (200, b'{"ok": true}'))
        self.assertEqual(result.headers["x-answer"], "42")
        self.assertFalse(self.client.busy)

    @inlineCallbacks
    def test_a_body_over_the_limit_fails_or_is_cut(self) -> Any:
        failure = yield self.assertFailure(self.client.request("GET", self.base + "/big", limit=1000), BodyTooLarge)
        self.assertEqual(describe(failure), "body larger than 1000 bytes")
        result = yield self.client.request("GET", self.base + "/big", limit=1000, truncate=True)
        self.assertEqual(result.body, b"x" * 1000)

    @inlineCallbacks
    def test_an_error_body_is_kept_short(self) -> Any:
        result = yield self.client.request("GET", self.base + "/missing")
        self.assertEqual(result.status, 404)
        self.assertEqual(len(result.body), 64 * 1024)

    @inlineCallbacks
    def test_a_stalled_body_times_out_and_its_socket_is_closed(self) -> Any:
        d = self.client.request("GET", self.base + "/stall")
        while not self.pages.stalled:
            yield _turn()
        self.assertTrue(self.client.busy)
        self.clock.advance(5.0)
        failure = yield self.assertFailure(d, TimeoutError)
        self.assertEqual(describe(failure), "timed out")
        yield self.pages.gone[0]  # the server saw the client close the connection
        self.assertFalse(self.client.busy)

    @inlineCallbacks
    def test_close_cancels_what_is_in_flight(self) -> Any:
        d = self.client.request("GET", self.base + "/stall")
        while not self.pages.stalled:
            yield _turn()
        yield self.client.close()
        yield self.assertFailure(d, Exception)
        yield self.pages.gone[0]

    @inlineCallbacks
    def test_pooled_connections_log_no_factory_lines(self) -> Any:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for _ in range(3):
            yield self.client.request("GET", self.base + "/")
        yield self.client.close()
        texts = [str(e.get("log_format")) for e in events]
        self.assertFalse([t for t in texts if "factory" in t.lower()], texts)


def _turn() -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d
