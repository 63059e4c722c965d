"""A fake HomeWizard P1 meter on 127.0.0.1: API v1 over plain HTTP, API v2 over
HTTPS (a CA and a device certificate generated at test time, named like the
real ones: ``appliance/p1dongle/<serial>``) with bearer token and the
``/api/ws`` WebSocket (authorization, subscribe, measurement pushes).
The bodies are the captured payloads in tests/fixtures/homewizard/."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from hashlib import sha256
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.ssl import CertificateOptions
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.support import fixture_json

TOKEN = "0123456789ABCDEF0123456789ABCDEF"
DEVICE_NAME = "appliance/p1dongle/5c2fafaabbcc"


def v1_body() -> dict[str, Any]:
    return fixture_json("homewizard", "v1_api_v1_data_hwe_p1_all.json")


def v2_body() -> dict[str, Any]:
    return fixture_json("homewizard", "v2_api_measurement_hwe_p1_3phase.json")


class Certificates:
    """A CA and a device certificate it signed (EC P-256), written under ``directory``."""

    def __init__(self, directory: str, name: str = DEVICE_NAME) -> None:
        os.makedirs(directory, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test HomeWizard CA")])
        self.ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(ca_key, hashes.SHA256()))
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (x509.CertificateBuilder()
                     .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                     .issuer_name(ca_name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                     .sign(ca_key, hashes.SHA256()))
        self.ca_file = os.path.join(directory, "homewizard-ca.pem")
        with open(self.ca_file, "wb") as handle:
            handle.write(self.ca.public_bytes(serialization.Encoding.PEM))
        der = self.cert.public_bytes(serialization.Encoding.DER)
        self.fingerprint = ":".join(f"{b:02X}" for b in sha256(der).digest())

    def server_options(self) -> CertificateOptions:
        return CertificateOptions(privateKey=crypto.PKey.from_cryptography_key(self.key),
                                  certificate=crypto.X509.from_cryptography(self.cert))


class _V1Data(Resource):
    isLeaf = True

    def __init__(self, fake: FakeHomeWizard) -> None:
        super().__init__()
        self.fake = fake

    def render_GET(self, request: Any) -> bytes:
        self.fake.requests.append(request.getAllHeaders())
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.fake.body).encode()


class _V2Measurement(Resource):
    isLeaf = True

    def __init__(self, fake: FakeHomeWizard) -> None:
        super().__init__()
        self.fake = fake

    def render_GET(self, request: Any) -> bytes:
        headers = request.getAllHeaders()
        self.fake.requests.append(headers)
        request.setHeader(b"content-type", b"application/json")
        if headers.get(b"authorization") != f"Bearer {self.fake.token}".encode():
            request.setResponseCode(401)
            return b'{"error":"user:unauthorized"}'
        if headers.get(b"x-api-version") != b"2":
            request.setResponseCode(400)
            return b'{"error":"request:api-version-not-supported"}'
        return json.dumps(self.fake.body).encode()


class _WsProtocol(WebSocketServerProtocol):
    authorized = False
    subscribed = False

    def onOpen(self) -> None:
        self.factory.fake.clients.append(self)
        self.send({"type": "authorization_requested", "data": {"api_version": "2.0.0"}})

    def send(self, message: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(message).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        fake = self.factory.fake
        message = json.loads(payload)
        fake.ws_messages.append(message)
        kind, data = message.get("type"), message.get("data")
        if kind == "authorization":
            if data == fake.token:
                self.authorized = True
                self.send({"type": "authorized"})
            else:
                self.send({"type": "error", "data": {"message": "user:unauthorized"}})
        elif kind == "subscribe" and data == "measurement" and self.authorized:
            self.subscribed = True
            if not fake.mute:
                self.send({"type": "measurement", "data": fake.body})
            waiting, fake._subscribed = fake._subscribed, []
            for d in waiting:
                d.callback(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        fake = self.factory.fake
        if self in fake.clients:
            fake.clients.remove(self)
        waiting, fake._closed = fake._closed, []
        for d in waiting:
            d.callback(None)


class FakeHomeWizard:
    """``api``: "v1" (HTTP) or "v2" (HTTPS + WebSocket)."""

    def __init__(self, case: TestCase, api: str = "v1", certificates: Certificates | None = None,
                 token: str = TOKEN) -> None:
        self.api = api
        self.token = token
        self.body = v1_body() if api == "v1" else v2_body()
        self.requests: list[dict[bytes, bytes]] = []
        self.ws_messages: list[dict[str, Any]] = []
        self.clients: list[_WsProtocol] = []
        self.mute = False
        self._subscribed: list[Deferred[_WsProtocol]] = []
        self._closed: list[Deferred[None]] = []
        root, api_resource = Resource(), Resource()
        root.putChild(b"api", api_resource)
        if api == "v1":
            v1 = Resource()
            api_resource.putChild(b"v1", v1)
            v1.putChild(b"data", _V1Data(self))
        else:
            api_resource.putChild(b"measurement", _V2Measurement(self))
            factory = WebSocketServerFactory()
            factory.protocol = _WsProtocol
            factory.fake = self  # type: ignore[attr-defined]
            api_resource.putChild(b"ws", WebSocketResource(factory))
        site = Site(root)
        site.noisy = False
        if api == "v1":
            self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        else:
            assert certificates is not None
            self.port = reactor.listenSSL(0, site, certificates.server_options(), interface="127.0.0.1")
        case.addCleanup(self.close)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    def subscribed(self) -> Deferred[_WsProtocol]:
        d: Deferred[_WsProtocol] = Deferred()
        self._subscribed.append(d)
        return d

    def closed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if not self.clients:
            d.callback(None)
        else:
            self._closed.append(d)
        return d

    def push(self, changes: dict[str, Any]) -> None:
        """A new measurement: the body updated with ``changes``, sent to subscribers."""
        self.body = {**copy.deepcopy(self.body), **changes}
        for client in self.clients:
            if client.subscribed:
                client.send({"type": "measurement", "data": self.body})

    def drop(self) -> None:
        for client in list(self.clients):
            client.dropConnection(abort=True)

    def close(self) -> Deferred[Any]:
        self.drop()
        return self.port.stopListening()
