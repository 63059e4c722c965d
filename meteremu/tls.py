"""TLS helpers shared by the HTTP sources that trust a device in their own way.

A device with a self-signed certificate (Envoy, HomeWizard) is trusted by a
pinned SHA-256 fingerprint of its certificate, a CA file, or not checked at
all; each source's ``IPolicyForHTTPS`` decides, and hands Twisted a
:class:`ContextCreator` over its own OpenSSL context.

Importing this module is cheap (config validation parses fingerprints):
pyOpenSSL is imported only when a connection is made.
"""

from __future__ import annotations

import re
from hashlib import sha256
from typing import Any

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

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


@implementer(IOpenSSLClientConnectionCreator)
class ContextCreator:
    """Client TLS connections over ``policy.context`` (an OpenSSL ``SSL.Context``)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        from OpenSSL import SSL

        connection = SSL.Connection(self.policy.context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection
