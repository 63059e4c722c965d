"""The one TLS policy for devices on the LAN, and the normal one for the web.

A device with a self-signed certificate (Envoy, HomeWizard) cannot be checked
the way a web browser checks a server: the certificate names no address, or
is signed by the maker's own CA. :class:`DeviceTLS` trusts such a device in
exactly one of four ways, chosen in the source's options:

* **pin** (``tls_fingerprint``): the leaf certificate's SHA-256 must match;
* **CA** (``ca_file``, optionally ``tls_name``): the chain must lead to one
  of the CA certificates in that file, and the leaf must carry that name (CN
  or DNS subject alternative name);
* **no verification** (``verify_ssl: false``): anything goes (a trusted LAN);
* **web** (none of them, where a source allows it): normal web PKI with host
  name checks (:func:`web_policy`).

``seen`` keeps the fingerprint of the last certificate the device showed and
``problem`` why the last handshake was refused, so a source can tell the user
what to pin.

Importing this module is cheap (config validation parses fingerprints and
checks CA files): pyOpenSSL is imported when the first connection is made.
"""

from __future__ import annotations

import re
from hashlib import sha256
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

if TYPE_CHECKING:
    from OpenSSL import SSL, crypto

_FINGERPRINT = re.compile(r"^[0-9a-fA-F]{64}$")
PEM_END = b"-----END CERTIFICATE-----"
PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


def parse_fingerprint(value: str) -> bytes:
    """``"AB:CD:…"``, plain hex or ``sha256/…`` (SHA-256 of the certificate's DER) → 32 bytes.

    Raises ``ValueError`` for anything else.
    """
    text = value.strip().replace(":", "").replace(" ", "")
    if text.lower().startswith("sha256"):
        text = text[6:].lstrip("/=")
    if not _FINGERPRINT.match(text):
        raise ValueError(value)
    return bytes.fromhex(text)


def fingerprint(der: bytes) -> bytes:
    """The SHA-256 of a certificate in DER form (what ``tls_fingerprint`` pins)."""
    return sha256(der).digest()


def show_fingerprint(digest: bytes) -> str:
    """``AB:CD:…``, as the user writes it in ``tls_fingerprint``."""
    return ":".join(f"{b:02X}" for b in digest)


def pem_blocks(pem: bytes) -> list[bytes]:
    """The certificates of a PEM file, one block each (other blocks, e.g. keys, are left out)."""
    return [block + PEM_END for block in pem.split(PEM_END) if PEM_BEGIN in block]


def read_pem_certificates(path: str) -> list[bytes]:
    """The PEM certificate blocks of ``path``; ``ValueError`` if it has none."""
    with open(path, "rb") as handle:
        blocks = pem_blocks(handle.read())
    if not blocks:
        raise ValueError("no PEM certificate found")
    return blocks


def check_ca_file(path: str) -> None:
    """Raise ``OSError``/``ValueError`` unless ``path`` is a readable file of valid certificates.

    Config validation calls this: the standard library's ``ssl`` parses the
    certificates, so validating a config never loads pyOpenSSL.
    """
    import ssl

    read_pem_certificates(path)
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        raise ValueError(exc.reason or str(exc)) from None


class _HasContext(Protocol):
    @property
    def context(self) -> SSL.Context: ...


class TLSPolicy(Protocol):
    """What the HTTP room and the WebSocket sources ask of a policy: Twisted's
    ``IPolicyForHTTPS``, structurally (so this module need not import twisted.web)."""

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any: ...


@implementer(IOpenSSLClientConnectionCreator)
class ContextCreator:
    """Client TLS connections over ``policy.context`` (an OpenSSL ``SSL.Context``)."""

    def __init__(self, policy: _HasContext) -> None:
        self.policy = policy

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        from OpenSSL import SSL

        connection = SSL.Connection(self.policy.context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection


def web_policy(ca_file: str | None = None) -> TLSPolicy:
    """Normal web PKI with host name checks, trusting the CAs in ``ca_file`` instead if given.

    Without ``ca_file`` nothing TLS is loaded until the first HTTPS connection.
    """
    from twisted.web.client import BrowserLikePolicyForHTTPS

    if ca_file is None:
        return BrowserLikePolicyForHTTPS()
    from twisted.internet.ssl import Certificate, trustRootFromCertificates

    roots = [Certificate.loadPEM(block) for block in read_pem_certificates(ca_file)]
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(roots))


class DeviceTLS:
    """A :class:`TLSPolicy` trusting one device (see the module docstring).

    ``legacy_ciphers`` allows OpenSSL's DEFAULT cipher list, which the
    Envoy's older TLS stack needs; ``client`` is a client certificate to show
    (a ``twisted.internet.ssl.PrivateCertificate``).
    """

    def __init__(self, *, fingerprint: bytes | None = None, ca_file: str | None = None,
                 name: str | None = None, verify: bool = True, legacy_ciphers: bool = False,
                 client: Any = None) -> None:
        self.fingerprint = fingerprint
        self.client = client
        self.ca_file = ca_file
        self.name = name
        self.verify = verify
        self.legacy_ciphers = legacy_ciphers
        self.seen: str | None = None
        self.problem: str | None = None
        self.mismatch = False  # the last certificate did not match the pinned fingerprint
        self._context: SSL.Context | None = None
        self._web: TLSPolicy | None = None

    @property
    def mode(self) -> str:
        """``pin``, ``ca``, ``none`` (no verification) or ``web``."""
        if self.fingerprint is not None:
            return "pin"
        if self.ca_file is not None:
            return "ca"
        return "web" if self.verify else "none"

    @property
    def context(self) -> SSL.Context:
        if self._context is None:
            self._context = self._make_context()
        return self._context

    def _make_context(self) -> SSL.Context:
        from OpenSSL import SSL, crypto
        from twisted.internet.ssl import CertificateOptions

        identity = {}
        if self.client is not None:
            identity = {"privateKey": self.client.privateKey.original, "certificate": self.client.original}
        context = CertificateOptions(verify=False, **identity).getContext()
        if self.ca_file is not None:
            store = context.get_cert_store()
            assert store is not None
            for block in read_pem_certificates(self.ca_file):
                store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, block))
        context.set_verify(SSL.VERIFY_PEER, self._check)
        if self.legacy_ciphers:
            try:
                context.set_cipher_list(b"DEFAULT")
            except SSL.Error:  # pragma: no cover - an OpenSSL without DEFAULT
                pass
        return context

    def _check(self, connection: Any, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        """OpenSSL's verify callback: the chain from the top down, the leaf (depth 0) last."""
        if depth > 0:  # only a CA check looks at the chain above the leaf
            if self.mode == "ca" and not ok:
                self.problem = f"certificate not signed by ca_file (error {errno})"
                return False
            return True
        from OpenSSL import crypto

        digest = fingerprint(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))
        self.seen = show_fingerprint(digest)
        self.problem = None
        self.mismatch = self.mode == "pin" and digest != self.fingerprint
        if self.mismatch:
            self.problem = f"certificate does not match tls_fingerprint (the device shows {self.seen})"
        elif self.mode == "ca" and not ok:
            self.problem = f"certificate not signed by ca_file (error {errno}; the device shows {self.seen})"
        elif self.mode == "ca" and self.name and not names_match(cert, self.name):
            self.problem = f"certificate is not for {self.name}"
        return self.problem is None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        if self.mode == "web":
            if self._web is None:
                self._web = web_policy()
            return self._web.creatorForNetloc(hostname, port)
        return ContextCreator(self)


def names_match(cert: crypto.X509, name: str) -> bool:
    """``name`` is the certificate's common name or one of its DNS alternative names."""
    if cert.get_subject().CN == name:
        return True
    # pyOpenSSL 26.2 removed X509.get_extension: the alternative names are read with cryptography.
    from cryptography import x509

    try:
        names = cert.to_cryptography().extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):  # none, or none that can be read
        return False
    return name in names.value.get_values_for_type(x509.DNSName)
