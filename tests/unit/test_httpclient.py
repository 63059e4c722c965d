"""The HTTP client room (``meteremu.httpclient``), the failure vocabulary
(``meteremu.failures``) and the cheap parts of ``meteremu.tls``.

The client runs against a real ``twisted.web`` server on 127.0.0.1 port 0;
the whole-request timeout runs on a ``Clock`` so no test waits for it.
"""

from __future__ import annotations

import os

from twisted.internet.defer import TimeoutError
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from meteremu.failures import Explained, describe
from meteremu.tls import check_ca_file, parse_fingerprint, pem_blocks, show_fingerprint


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
