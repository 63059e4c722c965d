"""A fake real Shelly Gen2 (a Pro 3EM) on 127.0.0.1 replaying a captured ``Shelly.GetStatus``
(tests/fixtures/shelly): ``GET /rpc/Shelly.GetStatus`` and the ``/rpc`` WebSocket
(``Shelly.GetStatus`` calls answered, ``NotifyStatus`` deltas pushed to the clients
that sent a ``src``), with the device's digest authentication when a password is
set: HTTP 401 + ``WWW-Authenticate: Digest … algorithm=SHA-256``, and over the
WebSocket an error 401 whose message is the challenge as JSON text (the shape of
tests/fixtures/shelly/aioshelly_ws_frame_401_auth_challenge_plus2pm.json). Put it
behind :func:`tests.support.faults.wrap_site` for HTTP faults."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    ConnectionDeny,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.support import fixture_json
from tests.support.faults import ConnectionTracker, Plan, wrap_site

REALM = "shellypro3em-aabbccddeeff"
NONCE = "1709223219"


def pro3em_status() -> dict[str, Any]:
    status: dict[str, Any] = fixture_json("shelly", "aioshelly_gen2_pro3em_fw1.1.0.json")["status"]
    return status


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fields(header: str) -> dict[str, str]:
    return {k: v1 or v2 for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', header)}


class _GetStatus(Resource):
    isLeaf = True

    def __init__(self, fake: FakeShellyDevice) -> None:
        super().__init__()
        self.fake = fake

    def render_GET(self, request: Any) -> bytes:
        fake = self.fake
        header = (request.getHeader(b"authorization") or b"").decode()
        fake.requests.append(header)
        request.setHeader(b"content-type", b"application/json")
        if fake.password is not None and not fake.http_ok(header, request.uri.decode()):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate",
                              f'Digest qop="auth", realm="{REALM}", nonce="{NONCE}", algorithm=SHA-256'.encode())
            return b""
        body = json.dumps(fake.status).encode()
        if fake.hold_http:  # answered by release_http(): a poll still on its way
            fake.held.append((request, body))
            return NOT_DONE_YET  # type: ignore[no-any-return]
        return body


class _Ws(WebSocketServerProtocol):
    src: str | None = None

    def onConnect(self, request: Any) -> None:
        if self.factory.fake.refuse_websockets:
            raise ConnectionDeny(503, "busy")

    def onOpen(self) -> None:
        self.factory.fake.clients.append(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        fake = self.factory.fake
        frame = json.loads(payload)
        fake.ws_frames.append(frame)
        reply: dict[str, Any] = {"id": frame.get("id"), "src": REALM, "dst": frame.get("src")}
        if fake.password is not None and not fake.ws_ok(frame.get("auth")):
            challenge = {"auth_type": "digest", "nonce": int(NONCE), "nc": 1, "realm": REALM, "algorithm": "SHA-256"}
            reply["error"] = {"code": 401, "message": json.dumps(challenge)}
        else:
            self.src = frame.get("src")
            reply["result"] = fake.status
        self.sendMessage(json.dumps(reply).encode())

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self in self.factory.fake.clients:
            self.factory.fake.clients.remove(self)


class FakeShellyDevice:
    def __init__(self, case: TestCase, password: str | None = None) -> None:
        self.password = password
        self.status = pro3em_status()
        self.requests: list[str] = []
        self.ws_frames: list[dict[str, Any]] = []
        self.clients: list[_Ws] = []
        self.refuse_websockets = False
        self.hold_http = False  # GetStatus over HTTP waits for release_http()
        self.held: list[tuple[Any, bytes]] = []
        root, rpc = Resource(), Resource()
        root.putChild(b"rpc", rpc)
        rpc.putChild(b"Shelly.GetStatus", _GetStatus(self))
        factory = WebSocketServerFactory()
        factory.protocol = _Ws
        factory.fake = self  # type: ignore[attr-defined]
        self.ws_resource = WebSocketResource(factory)
        rpc_ws = _RpcRoot(rpc, self.ws_resource)
        root.putChild(b"rpc", rpc_ws)
        self.site = Site(root)
        self.site.noisy = False
        self.plan: Plan
        self.tracker: ConnectionTracker
        self.plan, self.tracker = wrap_site(self.site)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        case.addCleanup(self.close)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    def http_ok(self, header: str, uri: str) -> bool:
        if not header.startswith("Digest "):
            return False
        f = _fields(header)
        ha1 = _sha(f"admin:{REALM}:{self.password}")
        ha2 = _sha(f"GET:{f.get('uri', '')}")
        expected = _sha(f"{ha1}:{f.get('nonce')}:{f.get('nc')}:{f.get('cnonce')}:auth:{ha2}")
        return f.get("username") == "admin" and f.get("response") == expected and uri.startswith(f.get("uri", "-"))

    def ws_ok(self, auth: Any) -> bool:
        if not isinstance(auth, dict):
            return False
        ha1 = _sha(f"admin:{REALM}:{self.password}")
        ha2 = _sha("dummy_method:dummy_uri")
        expected = _sha(f"{ha1}:{auth.get('nonce')}:1:{auth.get('cnonce')}:auth:{ha2}")
        return auth.get("username") == "admin" and auth.get("response") == expected

    def notify(self, delta: dict[str, Any]) -> None:
        """The device's values change: the status updated, a NotifyStatus to subscribed clients."""
        for key, value in delta.items():
            self.status[key] = {**self.status.get(key, {}), **value}
        for client in self.clients:
            if client.src:
                frame = {"src": REALM, "dst": client.src, "method": "NotifyStatus",
                         "params": {"ts": 1709223219.5, **copy.deepcopy(delta)}}
                client.sendMessage(json.dumps(frame).encode())

    def release_http(self) -> None:
        """Answer the held GetStatus requests and hold no more."""
        self.hold_http = False
        held, self.held = self.held, []
        for request, body in held:
            request.write(body)
            request.finish()

    def drop_websockets(self) -> None:
        for client in list(self.clients):
            client.dropConnection(abort=True)

    def close(self) -> Deferred[Any]:
        self.drop_websockets()
        self.plan.cleanup()
        return self.tracker.abort_all().addCallback(lambda _: self.port.stopListening())


class _RpcRoot(Resource):
    """``/rpc`` is the WebSocket; ``/rpc/<method>`` the HTTP RPC."""

    def __init__(self, methods: Resource, ws: WebSocketResource) -> None:
        super().__init__()
        self.methods, self.ws = methods, ws

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        if path == b"":
            return self.ws
        return self.methods.getChildWithDefault(path, request)

    def render(self, request: Any) -> Any:
        return self.ws.render(request)
