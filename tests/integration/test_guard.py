"""DNS rebinding against the dashboard and admin routes (issue #22.14), on a real meteremu."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import HTTPClient, start_app, test_config

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h"}}}
TOKEN = "a-long-admin-token-0123456789"


class RebindingTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def start(self, **server: Any) -> Any:
        config = test_config(self.mktemp(), meters=SIM, server={"host": "127.0.0.1", "http_port": 0, **server})
        self.app = yield start_app(self, config)
        self.base = f"http://127.0.0.1:{self.app.http_port()}"
        self.http = HTTPClient(self)

    def get(self, path: str, host: str | None = None, **headers: str) -> Any:
        sent = {k.replace("_", "-"): [v] for k, v in headers.items()}
        if host is not None:
            sent["Host"] = [host]
        return self.http.get(self.base + path, headers=sent)

    @inlineCallbacks
    def test_a_rebound_name_cannot_reach_the_admin_routes_but_rpc_stays_open(self) -> Any:
        yield self.start()
        for path in ("/admin/overview", "/metrics", "/ui", "/ui/power"):
            response, body = yield self.get(path, host="rebind.attacker.example")
            self.assertEqual(response.code, 403, path)
            self.assertIn("allowed_hosts", json.loads(body)["error"])
            response, _ = yield self.get(path)  # 127.0.0.1: one of this machine's addresses
            self.assertEqual(response.code, 200, path)
        response, _ = yield self.http.post(self.base + "/ui/train", b"", headers={
            "Host": ["rebind.attacker.example"], "Origin": ["http://rebind.attacker.example"]})
        self.assertEqual(response.code, 403)
        for path in ("/shelly", "/rpc/EM.GetStatus?id=0", "/healthz"):  # as on the real device
            response, _ = yield self.get(path, host="rebind.attacker.example")
            self.assertEqual(response.code, 200, path)

    @inlineCallbacks
    def test_allowed_hosts_adds_names(self) -> Any:
        yield self.start(allowed_hosts=["meters.home.arpa"])
        response, _ = yield self.get("/admin/overview", host="meters.home.arpa:8080")
        self.assertEqual(response.code, 200)

    @inlineCallbacks
    def test_the_admin_token(self) -> Any:
        yield self.start(admin_token=TOKEN)
        response, _ = yield self.get("/admin/overview")
        self.assertEqual(response.code, 401)
        response, _ = yield self.get("/admin/overview", Authorization=f"Bearer {TOKEN}")
        self.assertEqual(response.code, 200)
        response, _ = yield self.get("/admin/overview", Authorization="Bearer wrong-token-wrong-token")
        self.assertEqual(response.code, 401)
        response, _ = yield self.get(f"/ui?token={TOKEN}")
        self.assertEqual(response.code, 200)
        cookie = response.headers.getRawHeaders(b"set-cookie")[0]
        self.assertIn(b"HttpOnly", cookie)
        self.assertIn(b"SameSite=strict", cookie)
        response, _ = yield self.get("/ui/power", Cookie=cookie.split(b";")[0].decode())
        self.assertEqual(response.code, 200)  # the page's own requests carry the cookie
        response, _ = yield self.get("/rpc/EM.GetStatus?id=0")
        self.assertEqual(response.code, 200)  # RPC never needs it


class IngressTests(TestCase):
    """Home Assistant ingress: the Supervisor's proxy forwards the browser's Host."""

    timeout = 30

    @inlineCallbacks
    def start(self, proxies: list[str]) -> Any:
        config = test_config(self.mktemp(), meters=SIM, server={
            "host": "127.0.0.1", "http_port": 0, "admin_token": TOKEN, "ingress_proxies": proxies})
        self.app = yield start_app(self, config)
        self.base = f"http://127.0.0.1:{self.app.http_port()}"
        self.http = HTTPClient(self)

    @inlineCallbacks
    def test_the_trusted_proxy_reaches_the_dashboard_under_its_prefix(self) -> Any:
        yield self.start(["127.0.0.1"])
        headers = {"Host": ["homeassistant.local:8123"], "X-Ingress-Path": ["/api/hassio_ingress/tok3n"]}
        for path in ("/ui", "/ui/power", "/admin/overview"):
            response, _ = yield self.http.get(self.base + path, headers=headers)
            self.assertEqual(response.code, 200, path)
        response, _ = yield self.http.get(self.base + "/ui", headers={"Host": ["homeassistant.local:8123"]})
        self.assertEqual(response.code, 403)  # no ingress header: the ordinary rules

    @inlineCallbacks
    def test_the_header_from_anyone_else_changes_nothing(self) -> Any:
        yield self.start(["172.30.32.2"])
        headers = {"Host": ["homeassistant.local:8123"], "X-Ingress-Path": ["/api/hassio_ingress/tok3n"]}
        response, _ = yield self.http.get(self.base + "/ui", headers=headers)
        self.assertEqual(response.code, 403)
