"""The Host allowlist's pure parts (meteremu.web.guard)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meteremu.web import guard
from meteremu.web.guard import allowed, host_name, own_names, protected


class GuardTests(SynchronousTestCase):
    def test_host_names(self) -> None:
        self.assertEqual(host_name(b"192.168.1.5:8080"), "192.168.1.5")
        self.assertEqual(host_name(b"Meteremu.LOCAL."), "meteremu.local")
        self.assertEqual(host_name(b"[fe80::1]:80"), "fe80::1")
        self.assertEqual(host_name(b"::1"), "::1")  # bare IPv6 (no port can be told apart)
        self.assertIsNone(host_name(None))
        self.assertIsNone(host_name(b""))

    def test_protected_paths(self) -> None:
        for path in (b"/ui", b"/ui/power", b"/ui/train", b"/admin/overview", b"/metrics"):
            self.assertTrue(protected(path), path)
        for path in (b"/shelly", b"/rpc", b"/rpc/EM.GetStatus", b"/healthz", b"/uix", b"/metricsfoo"):
            self.assertFalse(protected(path), path)

    def test_own_names_and_extras(self) -> None:
        names = own_names(["Dash.Example ", ""])
        for name in ("localhost", "127.0.0.1", "::1", "dash.example"):
            self.assertIn(name, names)
        self.assertTrue(allowed("127.0.0.1", names))
        self.assertFalse(allowed("rebind.attacker.example", names))
        self.assertFalse(allowed(None, names))
        self.assertTrue(allowed("anything", frozenset({"*"})))


class IngressPrefixTests(SynchronousTestCase):
    PROXIES = frozenset({"172.30.32.2"})

    def test_a_trusted_proxy_with_a_plain_path(self) -> None:
        self.assertEqual(guard.ingress_prefix("172.30.32.2", b"/api/hassio_ingress/Abc-123_x/", self.PROXIES),
                         "/api/hassio_ingress/Abc-123_x")

    def test_anyone_else_or_no_header_is_not_ingress(self) -> None:
        self.assertIsNone(guard.ingress_prefix("192.0.2.7", b"/api/hassio_ingress/abc", self.PROXIES))
        self.assertIsNone(guard.ingress_prefix("172.30.32.2", None, self.PROXIES))
        self.assertIsNone(guard.ingress_prefix(None, b"/api/hassio_ingress/abc", self.PROXIES))

    def test_only_plain_paths_reach_the_page(self) -> None:
        for header in (b"", b"/", b"api", b"/a/../b", b'/x"><script>', b"/a b", b"//evil.example/x",
                       b"/" + b"a" * 300, b"/a/./b", b"javascript:alert(1)"):
            self.assertIsNone(guard.ingress_prefix("172.30.32.2", header, self.PROXIES), header)
