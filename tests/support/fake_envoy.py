"""A fake Enphase Envoy (HTTPS or HTTP) and a fake Enphase cloud, on 127.0.0.1 only.

``FakeEnvoy`` replays one fixture folder of ``tests/fixtures/envoy/`` (file
naming as in that folder's README): firmware >= 7 over HTTPS with token
checks and ``/auth/check_jwt``, older firmware over plain HTTP with Digest on
the protected endpoints. Every answer rewrites the sample timestamps so that
each poll is a *new* sample. Tests can override answers, hang an endpoint,
or count concurrent requests.

``FakeCloud`` is Enlighten + Entrez behind one HTTPS listener whose
certificate is signed by a test CA (give the client that CA with
``cloud_ca_file``); the tokens it issues are unsigned JWTs that the linked
FakeEnvoy accepts.

Certificates are made at test time with ``cryptography``; nothing here
contacts any address but 127.0.0.1.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from meteremu.sources.envoy.auth import installer_password
from meteremu.sources.envoy.parse import parse_challenge

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "envoy")
BASE_TIME = 1_800_000_000


def fixture_path(*parts: str) -> str:
    return os.path.join(FIXTURES, *parts)


def expectations() -> dict[str, Any]:
    with open(fixture_path("derived_expectations.json"), encoding="utf-8") as handle:
        data = json.load(handle)
    data.pop("_about", None)
    return data


def folders() -> list[str]:
    return sorted(name for name in os.listdir(FIXTURES) if os.path.isdir(fixture_path(name)))


# -- certificates --------------------------------------------------------------------


@dataclass
class CertBundle:
    key_pem: bytes
    cert_pem: bytes
    der: bytes

    @property
    def fingerprint(self) -> str:
        return ":".join(f"{b:02X}" for b in hashlib.sha256(self.der).digest())

    def private_certificate(self) -> PrivateCertificate:
        return PrivateCertificate.loadPEM(self.key_pem + self.cert_pem)


def make_cert(common_name: str, ip: str | None = None, issuer: CertBundle | None = None,
              ca: bool = False) -> CertBundle:
    """A certificate (EC P-256), self-signed unless ``issuer`` is given; IP SAN optional."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    if issuer is not None:
        issuer_key = serialization.load_pem_private_key(issuer.key_pem, None)
        issuer_name = x509.load_pem_x509_certificate(issuer.cert_pem).subject
    else:
        issuer_key, issuer_name = key, name
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=30)))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return CertBundle(key_pem, cert.public_bytes(serialization.Encoding.PEM),
                      cert.public_bytes(serialization.Encoding.DER))


# -- tokens ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(aud: str, username: str = "owner@example.com", user_type: str = "owner",
             iat: float | None = None, lifetime: float = 365 * 86400, exp: float | None = None) -> str:
    """A synthetic, unsigned ES256-looking JWT (the client never verifies signatures)."""
    iat = iat if iat is not None else reactor.seconds()
    payload = {"aud": aud, "iss": "Entrez", "enphaseUser": user_type, "iat": int(iat),
               "exp": int(exp if exp is not None else iat + lifetime), "jti": secrets.token_hex(8),
               "username": username}
    header = {"kid": "test", "typ": "JWT", "alg": "ES256"}
    return ".".join((_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()),
                     _b64(secrets.token_bytes(64))))


# -- server plumbing --------------------------------------------------------------------


class _TrackingSite(Site):
    """A quiet Site that can close every server-side connection at cleanup."""

    noisy = False

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.open: dict[Any, Deferred[None]] = {}

    def log(self, request: Any) -> None:
        pass

    def buildProtocol(self, addr: Any) -> Protocol:
        proto = super().buildProtocol(addr)
        lost: Deferred[None] = Deferred()
        self.open[proto] = lost
        original = proto.connectionLost

        def connection_lost(reason: Any, proto: Any = proto) -> None:
            original(reason)
            done = self.open.pop(proto, None)
            if done is not None and not done.called:
                done.callback(None)

        proto.connectionLost = connection_lost  # type: ignore[method-assign]
        return proto

    def close_all(self) -> Deferred[Any]:
        waits = list(self.open.values())
        for proto in list(self.open):
            # Site builds a _GenericHTTPChannelProtocol whose transport lives on its channel
            channel = getattr(proto, "_channel", proto)
            transport = getattr(channel, "transport", None) or getattr(proto, "transport", None)
            if transport is not None:
                transport.abortConnection()
        return DeferredList(waits) if waits else succeed(None)


class _Listener:
    def __init__(self, resource: Resource, cert: CertBundle | None, port: int = 0) -> None:
        self.site = _TrackingSite(resource)
        self.cert = cert
        if cert is not None:
            self.port = reactor.listenSSL(port, self.site, cert.private_certificate().options(),
                                          interface="127.0.0.1")
        else:
            self.port = reactor.listenTCP(port, self.site, interface="127.0.0.1")

    @property
    def number(self) -> int:
        return self.port.getHost().port

    def stop(self) -> Deferred[Any]:
        d = self.site.close_all()
        d.addCallback(lambda _: self.port.stopListening())
        return d


# -- the fake Envoy -----------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class FakeEnvoyState:
    valid_tokens: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)


class FakeEnvoy(Resource):
    """Replays a fixture folder; see the module docstring."""

    isLeaf = True

    def __init__(self, folder: str, *, tls: bool | None = None, digest: bool = True) -> None:
        super().__init__()
        self.folder = folder
        self.dir = fixture_path(folder)
        with open(os.path.join(self.dir, "info"), "rb") as handle:
            self.info_xml = handle.read()
        from meteremu.sources.envoy.parse import parse_info

        self.info = parse_info(self.info_xml)
        self.token_mode = self.info.uses_tokens
        self.tls = self.token_mode if tls is None else tls
        self.digest = digest and not self.token_mode
        self.digest_user = "installer"
        self.digest_password = installer_password(self.info.serial)
        self.nonce = secrets.token_hex(12)
        self.state = FakeEnvoyState()
        self.seen: list[Seen] = []
        self.overrides: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.data: dict[str, Any] = {}  # path -> JSON to serve instead of the file
        self.hang: set[str] = set()
        self.hung: list[Any] = []
        self.refuse_after: int | None = None
        self.seq = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.livedata: dict[str, Any] | None = None
        self.on_request: Callable[[Seen], None] | None = None
        self.cert = make_cert("envoy") if self.tls else None
        self.listener: _Listener | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self, port: int = 0) -> int:
        """Listen (again: pass the old port to come back after an outage)."""
        self.listener = _Listener(self, self.cert, port)
        return self.listener.number

    def stop(self) -> Deferred[Any]:
        for request in self.hung:
            if not request.finished and not getattr(request, "_disconnected", False):
                try:
                    request.setResponseCode(503)
                    request.finish()
                except Exception:  # noqa: BLE001,S110 - the client may be gone already
                    pass
        self.hung.clear()
        return self.listener.stop() if self.listener else succeed(None)

    @property
    def url(self) -> str:
        assert self.listener is not None
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.listener.number}"

    @property
    def fingerprint(self) -> str:
        assert self.cert is not None
        return self.cert.fingerprint

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    # -- content --------------------------------------------------------------------

    def _file(self, path: str, query: dict[str, list[str]]) -> str:
        name = path.lstrip("/").replace("/", "_")
        if name == "production.json" and query.get("details") == ["1"]:
            if os.path.exists(os.path.join(self.dir, "production.json_details_1")):
                return "production.json_details_1"
        return name

    def _load(self, name: str) -> tuple[int, dict[str, str], bytes] | None:
        full = os.path.join(self.dir, name)
        if not os.path.isfile(full) or "/" in name or name.startswith("."):
            return None
        with open(full, "rb") as handle:
            body = handle.read()
        code, headers = 200, {}
        meta = full + "_log.json"
        if os.path.isfile(meta):
            with open(meta, encoding="utf-8") as handle:
                log = json.load(handle)
            code = int(log.get("code", 200))
            if "www-authenticate" in log.get("headers", {}):
                headers["www-authenticate"] = log["headers"]["www-authenticate"]
        return code, headers, body

    def _restamp(self, name: str, body: bytes) -> bytes:
        """New timestamps on every answer, so each poll is a new sample."""
        if name not in ("ivp_meters_readings", "production.json", "production.json_details_1",
                        "production"):
            return body
        try:
            data = json.loads(body)
        except ValueError:
            return body
        self.seq += 1
        stamp = BASE_TIME + self.seq
        if isinstance(data, list):
            for meter in data:
                if isinstance(meter, dict) and "timestamp" in meter:
                    meter["timestamp"] = stamp
                    for ch in meter.get("channels", []):
                        ch["timestamp"] = stamp
        elif isinstance(data, dict):
            for key in ("production", "consumption", "storage"):
                for entry in data.get(key, []) or []:
                    if isinstance(entry, dict) and entry.get("readingTime"):
                        entry["readingTime"] = stamp
        return json.dumps(data).encode()

    def bump_inverters(self, seconds: int = 300, serials: set[str] | None = None,
                       watts: float | None = None) -> None:
        """Move ``lastReportDate`` forward for some (default: all) inverters."""
        key = "/api/v1/production/inverters"
        if key not in self.data:
            with open(os.path.join(self.dir, "api_v1_production_inverters"), "rb") as handle:
                self.data[key] = json.load(handle)
        for row in self.data[key]:
            if serials is None or row["serialNumber"] in serials:
                row["lastReportDate"] += seconds
                if watts is not None:
                    row["lastReportWatts"] = watts

    # -- auth -----------------------------------------------------------------------

    def _bearer(self, request: Any) -> str | None:
        value = (request.getHeader(b"authorization") or b"").decode("latin-1")
        return value[7:] if value.startswith("Bearer ") else None

    def _token_ok(self, request: Any) -> bool:
        token = self._bearer(request)
        if token is not None:
            return token in self.state.valid_tokens
        session = request.getCookie(b"sessionId")
        return session is not None and session.decode() in self.state.sessions

    def _digest_ok(self, request: Any) -> bool:
        value = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, params = parse_challenge(value)
        if scheme != "digest" or params.get("username") != self.digest_user:
            return False
        if params.get("nonce") != self.nonce or params.get("realm") != "enphaseenergy.com":
            return False

        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()  # noqa: S324

        ha1 = md5(f"{self.digest_user}:enphaseenergy.com:{self.digest_password}")
        ha2 = md5(f"{request.method.decode()}:{params.get('uri')}")
        expected = md5(f"{ha1}:{self.nonce}:{params.get('nc')}:{params.get('cnonce')}:auth:{ha2}")
        return params.get("response") == expected and params.get("uri") == request.uri.decode()

    def _protected_legacy(self, path: str, code: int) -> bool:
        return (self.digest and (path.startswith("/ivp/") or path == "/api/v1/production/inverters"
                                 or code == 401))

    # -- serving --------------------------------------------------------------------

    def render(self, request: Any) -> Any:
        path = request.path.decode()
        query = parse_qs(request.uri.decode().partition("?")[2])
        seen = Seen(request.method.decode(), request.uri.decode(),
                    {k.decode().lower(): v[-1].decode("latin-1")
                     for k, v in request.requestHeaders.getAllRawHeaders()},
                    request.content.read() if request.content else b"")
        self.seen.append(seen)
        if self.on_request is not None:
            self.on_request(seen)
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        request.notifyFinish().addBoth(self._finished)
        if path in self.hang:
            self.hung.append(request)
            return NOT_DONE_YET
        code, headers, body = self._answer(request, path, query)
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name.encode(), value.encode())
        return body

    def _finished(self, _: Any) -> None:
        self.concurrent -= 1

    def _answer(self, request: Any, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        if path in self.overrides:
            return self.overrides[path]
        if path == "/info":
            return 200, {"content-type": "text/xml"}, self.info_xml
        if self.token_mode:
            if path == "/auth/check_jwt":
                token = self._bearer(request)
                if token is not None and token in self.state.valid_tokens:
                    session = secrets.token_hex(16)
                    self.state.sessions.add(session)
                    request.addCookie(b"sessionId", session.encode(), path=b"/")
                    return 200, {"content-type": "text/html"}, b"<!DOCTYPE html><h2>Valid token.</h2>"
                return 401, {"content-type": "text/html"}, b"<h1>401 Authorization Required</h1>"
            if path != "/home" and not self._token_ok(request):
                return 401, {"content-type": "text/html"}, b"<h1>401 Authorization Required</h1>"
        if path == "/ivp/livedata/status" and self.livedata is not None:
            return 200, {"content-type": "application/json"}, json.dumps(self.livedata).encode()
        if path == "/ivp/livedata/stream" and request.method == b"POST" and self.livedata is not None:
            self.livedata.setdefault("connection", {})["sc_stream"] = "enabled"
            return 200, {"content-type": "application/json"}, b'{"sc_stream": "enabled"}'
        name = self._file(path, query)
        found = self._load(name)
        if path in self.data:
            found = (200, {}, json.dumps(self.data[path]).encode())
        if found is None:
            code, headers, body = 404, {}, b'{"error": "404 - Not Found"}'
        else:
            code, headers, body = found
        if self._protected_legacy(path, code):
            if not self._digest_ok(request):
                return 401, {"www-authenticate": f'Digest qop="auth", realm="enphaseenergy.com", '
                                                 f'nonce="{self.nonce}"',
                             "content-type": "text/html"}, b"<html>401 Unauthorized</html>"
            if code == 401:
                code = 200
        if code == 401:
            return 401, headers, body
        headers.setdefault("content-type", "application/json")
        return code, headers, self._restamp(name, body)


# -- the fake cloud ------------------------------------------------------------------------


class FakeCloud(Resource):
    """Enlighten ``/login/login.json`` and Entrez ``/tokens`` on one HTTPS port."""

    isLeaf = True

    def __init__(self, envoy_state: FakeEnvoyState | None = None, *, username: str = "owner@example.com",
                 password: str = "s3cret-Passw0rd!", user_type: str = "owner",
                 lifetime: float = 365 * 86400) -> None:
        super().__init__()
        self.envoy_state = envoy_state
        self.username = username
        self.password = password
        self.user_type = user_type
        self.lifetime = lifetime
        self.mfa = False
        self.down = False
        self.sessions: set[str] = set()
        self.issued: list[str] = []
        self.logins = 0
        self.seen: list[Seen] = []
        self.ca = make_cert("meteremu test CA", ca=True)
        self.cert = make_cert("127.0.0.1", ip="127.0.0.1", issuer=self.ca)
        self.listener: _Listener | None = None

    def start(self) -> int:
        self.listener = _Listener(self, self.cert)
        return self.listener.number

    def stop(self) -> Deferred[Any]:
        return self.listener.stop() if self.listener else succeed(None)

    @property
    def url(self) -> str:
        assert self.listener is not None
        return f"https://127.0.0.1:{self.listener.number}"

    def write_ca(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "cloud-ca.pem")
        with open(path, "wb") as handle:
            handle.write(self.ca.cert_pem)
        return path

    def render(self, request: Any) -> bytes:
        path = request.path.decode()
        body = request.content.read() if request.content else b""
        self.seen.append(Seen(request.method.decode(), request.uri.decode(), {}, body))
        if self.down:
            request.setResponseCode(503)
            return b"maintenance"
        if path == "/login/login.json" and request.method == b"POST":
            self.logins += 1
            form = parse_qs(body.decode())
            if form.get("user[email]") != [self.username] or form.get("user[password]") != [self.password]:
                request.setResponseCode(401)
                return b'{"message": "Invalid email or password"}'
            request.setHeader(b"content-type", b"application/json")
            if self.mfa:
                return json.dumps({"message": "success", "isBlocked": False,
                                   "requires_mfa": True}).encode()
            session = secrets.token_hex(16)
            self.sessions.add(session)
            return json.dumps({"message": "success", "session_id": session, "user_id": 1,
                               "user_name": self.username, "is_consumer": True,
                               "manager_token": "m"}).encode()
        if path == "/tokens" and request.method == b"POST":
            try:
                data = json.loads(body)
            except ValueError:
                request.setResponseCode(400)
                return b"bad json"
            if data.get("session_id") not in self.sessions or data.get("username") != self.username:
                request.setResponseCode(401)
                return b"unauthorized"
            token = make_jwt(str(data.get("serial_num")), self.username, self.user_type,
                             lifetime=self.lifetime)
            self.issued.append(token)
            if self.envoy_state is not None:
                self.envoy_state.valid_tokens.add(token)
            request.setHeader(b"content-type", b"text/plain")
            return token.encode()
        request.setResponseCode(404)
        return b"not found"
