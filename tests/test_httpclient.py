"""The HTTP client room (``meteremu.httpclient``), the failure vocabulary
(``meteremu.failures``) and the cheap parts of ``meteremu.tls``.

The client runs against a real ``twisted.web`` server on 127.0.0.1 port 0;
the whole-request timeout runs on a ``Clock`` so no test waits for it.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from meteremu.failures import Explained, describe
from meteremu.httpclient import BodyTooLarge, HTTPClient
from meteremu.tls import check_ca_file, parse_fingerprint, pem_blocks, show_fingerprint


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


class DescribeTests(SynchronousTestCase):
    def test_vocabulary(self) -> None:
        self.assertEqual(describe(TimeoutError()), "timed out")
        self.assertEqual(describe(TimeoutError(), 0.3), "no answer within 0.3 s")
        self.assertEqual(describe(ConnectionRefusedError()), "connection refused")
        self.assertEqual(describe(DNSLookupError("x")), "host name not found")
        self.assertEqual(describe(ConnectionDone()), "closed by the other end")
        self.assertEqual(describe(FileNotFoundError(2, "No such file or directory")), "No such file or directory")
        self.assertEqual(describe(ValueError("boom")), "ValueError: boom")
        self.assertEqual(describe(KeyError()), "KeyError")
        self.assertEqual(describe(Explained("HTTP 500 from /api")), "HTTP 500 from /api")

    def test_twisted_web_wrappers(self) -> None:
        never = ResponseNeverReceived([Failure(ConnectionRefusedError())])
        self.assertEqual(describe(Failure(never)), "connection refused")
        cut = ResponseFailed([Failure(ConnectionDone())])
        self.assertEqual(describe(cut), "answer cut off (closed by the other end)")


class TLSHelperTests(SynchronousTestCase):
    def test_fingerprints(self) -> None:
        raw = bytes(range(32))
        shown = show_fingerprint(raw)
        for text in (shown, raw.hex(), "sha256/" + raw.hex(), shown.lower()):
            self.assertEqual(parse_fingerprint(text), raw, text)
        self.assertRaises(ValueError, parse_fingerprint, "ab" * 31)

    def test_ca_file_is_checked_without_pyopenssl(self) -> None:
        from tests.support.fake_homewizard import Certificates

        certs = Certificates(self.mktemp())
        check_ca_file(certs.ca_file)
        with open(certs.ca_file, "rb") as handle:
            self.assertEqual(len(pem_blocks(handle.read())), 1)
        broken = os.path.join(self.mktemp() + "-broken.pem")
        with open(broken, "wb") as handle:
            handle.write(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        self.assertRaises(ValueError, check_ca_file, broken)
        self.assertRaises(OSError, check_ca_file, "/nonexistent/ca.pem")

    def test_a_name_matches_the_common_name_or_a_dns_alternative_name(self) -> None:
        import datetime as dt
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        from OpenSSL import crypto

        from meteremu.tls import names_match

        def certificate(*alternative: str) -> crypto.X509:
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appliance/p1dongle/5c2fafaabbcc")])
            now = dt.datetime.now(dt.UTC)
            builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
            if alternative:
                builder = builder.add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName(n) for n in alternative] + [x509.IPAddress(ipaddress.ip_address("192.0.2.7"))]),
                    critical=False)
            return crypto.X509.from_cryptography(builder.sign(key, hashes.SHA256()))

        named = certificate("envoy.local", "p1.local")
        self.assertTrue(names_match(named, "appliance/p1dongle/5c2fafaabbcc"))
        self.assertTrue(names_match(named, "p1.local"))
        self.assertFalse(names_match(named, "other.local"))
        self.assertFalse(names_match(named, "192.0.2.7"))  # an IP address entry is not a DNS name
        plain = certificate()
        self.assertFalse(names_match(plain, "p1.local"))
