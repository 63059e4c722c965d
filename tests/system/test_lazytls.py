"""TLS loaded on first use (``meteremu.compat.lazytls``, the ``meteremu`` reactor).

Each check runs a fresh Python process, because this one has loaded TLS long
ago: start-up as ``twistd meteremu`` does it must leave pyOpenSSL and
cryptography out; every module that then took a "no TLS" branch must be one
``lazytls.RESTORE`` knows, with exactly the names that branch binds (read from
the installed libraries' source, so an upgrade that adds one fails here); and
an HTTPS request made afterwards through treq must work.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.static import Data

from meteremu.compat import lazytls
from tests.support import ROOT, HTTPClient
from tests.support.fake_envoy import _Listener, make_cert
from tests.support.twistd import RUN, spawn, write_config

START_UP = """
import json, sys
from meteremu.reactor import install
install()
from meteremu import tap
from meteremu.app import build
from meteremu.config import default_config
from meteremu.devices import preload
from meteremu.compat import lazytls
config = default_config()
preload(dc.type for dc in config.devices)  # as tap.makeService: device wiring while TLS is hidden,
lazytls.release()  # then TLS may load on first use,
build(config, __import__("twisted.internet.reactor").internet.reactor)  # then the tree is built
"""

REPORT_MODULES = START_UP + """
files = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
print(json.dumps({"files": files, "hidden_after_release": lazytls.hidden()}))
"""

HTTPS_GET = START_UP + """
from twisted.internet import endpoints, task
from twisted.internet.interfaces import IReactorSSL
import autobahn.util
before = {"openssl": "OpenSSL" in sys.modules,
          "stand_in": isinstance(endpoints.TLSMemoryBIOFactory, lazytls.StandIn),
          "autobahn_tls_before": autobahn.util._TLS,
          "reactor_ssl_before": IReactorSSL.providedBy(__import__("twisted.internet.reactor").internet.reactor)}

def main(reactor, port, ca_pem):
    import treq
    from twisted.internet.ssl import Certificate
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
    policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(ca_pem.encode()))
    d = treq.get(f"https://127.0.0.1:{port}/", agent=Agent(reactor, contextFactory=policy))
    d.addCallback(treq.content)
    def done(body):
        from twisted.internet.interfaces import IReactorSSL
        print(json.dumps({**before, "body": body.decode(),
                          "restored": endpoints.TLSMemoryBIOFactory.__module__,
                          "loaded": lazytls.loaded(), "reactor_ssl": IReactorSSL.providedBy(reactor)}))
    return d.addCallback(done)

task.react(main, [int(sys.argv[1]), sys.argv[2]])
"""

# Modules whose import probes for TLS; a "try:" around importing one of these
# takes the "no TLS" branch while pyOpenSSL is hidden.
TLS_MODULES = ("OpenSSL", "twisted.protocols.tls", "twisted.internet.ssl",
               "twisted.internet._newtls", "twisted.internet._sslverify", "service_identity")

# Degraded for good, by design: STARTTLS on reactor TCP transports (class bases).
KNOWN_GAPS = {"twisted.internet.tcp"}


def run_python(code: str, *args: str) -> Any:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return getProcessOutputAndValue(sys.executable, ["-c", code, *args], env=env, path=ROOT)


def _imports_tls(node: ast.stmt) -> bool:
    for sub in ast.walk(node):
        names: list[str] = []
        if isinstance(sub, ast.ImportFrom) and sub.module:
            names = [sub.module] + [f"{sub.module}.{alias.name}" for alias in sub.names]
        elif isinstance(sub, ast.Import):
            names = [alias.name for alias in sub.names]
        if any(n == m or n.startswith(m + ".") for n in names for m in TLS_MODULES):
            return True
    return False


def _bound(statements: list[ast.stmt]) -> set[str]:
    """Names the statements bind at module level (imports and plain assignments)."""
    names: set[str] = set()
    for statement in statements:
        for sub in ast.walk(statement):
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in sub.names)
            elif isinstance(sub, ast.Assign):
                names.update(t.id for t in sub.targets if isinstance(t, ast.Name))
    return names


def tls_probes(path: str) -> set[str]:
    """Names that a module binds only when its top-level ``try`` of a TLS import succeeds."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Try) and any(_imports_tls(s) for s in node.body):
            names |= _bound(node.body + node.orelse)
    return names


class ProbeParserTests(SynchronousTestCase):
    """The source scan the drift check relies on, on known shapes."""

    def test_try_else_names_are_found(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("try:\n    from OpenSSL.SSL import Error as SSLError\nexcept ImportError:\n"
                         "    F = None\nelse:\n    from twisted.protocols.tls import F as _F\n    F = _F\n"
                         "try:\n    import json\nexcept ImportError:\n    json = None\n")
        self.assertEqual(tls_probes(path), {"SSLError", "_F", "F"})

    def test_twisted_endpoints_matches_restore_list(self) -> None:
        import twisted.internet.endpoints as endpoints

        self.assertEqual(tls_probes(endpoints.__file__),
                         set(lazytls.RESTORE["twisted.internet.endpoints"]))


class StartUpTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_start_up_leaves_tls_out_and_every_degraded_module_is_restorable(self) -> Any:
        out, err, code = yield run_python(REPORT_MODULES)
        self.assertEqual(code, 0, err.decode()[-3000:])
        report = json.loads(out.decode().strip().splitlines()[-1])
        files: dict[str, str | None] = report["files"]
        self.assertFalse(report["hidden_after_release"])
        for heavy in ("OpenSSL", "cryptography.hazmat.bindings._rust", "service_identity",
                      "twisted.internet.ssl", "autobahn.twisted"):
            self.assertNotIn(heavy, files, f"{heavy} was imported at start-up")
        degraded = {}
        for name, path in files.items():
            if path and path.endswith(".py"):
                probes = tls_probes(path)
                if probes:
                    degraded[name] = probes
        self.assertIn("twisted.internet.endpoints", degraded)  # the scan sees what we know
        for name, probes in degraded.items():
            if name in KNOWN_GAPS:
                continue
            self.assertIn(name, lazytls.RESTORE, f"{name} took a no-TLS branch lazytls does not restore")
            self.assertEqual(set(lazytls.RESTORE[name]), probes, name)

    @inlineCallbacks
    def test_https_request_after_start_up_loads_tls_on_first_use(self) -> Any:
        ca = make_cert("meteremu test CA", ca=True)
        cert = make_cert("127.0.0.1", ip="127.0.0.1", issuer=ca)
        root = Resource()
        root.putChild(b"", Data(b"hello over TLS", "text/plain"))
        listener = _Listener(root, cert)
        self.addCleanup(listener.stop)
        out, err, code = yield run_python(HTTPS_GET, str(listener.number), ca.cert_pem.decode())
        self.assertEqual(code, 0, err.decode()[-3000:])
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual(result, {"openssl": False, "stand_in": True, "autobahn_tls_before": False,
                                  "reactor_ssl_before": False, "body": "hello over TLS",
                                  "restored": "twisted.protocols.tls", "loaded": True,
                                  "reactor_ssl": True})


class _Upgrade(Protocol):
    """Opens a WebSocket on ``/rpc`` by hand; ``upgraded`` fires on the 101."""

    def __init__(self) -> None:
        self.upgraded: Deferred[None] = Deferred()
        self.head = b""

    def connectionMade(self) -> None:
        self.transport.write(b"GET /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             b"Sec-WebSocket-Version: 13\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head and not self.upgraded.called:
            self.upgraded.callback(None)


def tls_mapped(pid: int) -> bool:
    """Whether cryptography's Rust module (what pyOpenSSL loads) is mapped into ``pid``."""
    with open(f"/proc/{pid}/maps", encoding="utf-8") as maps:
        return "cryptography/hazmat/bindings/_rust" in maps.read()


class ServiceTests(TestCase):
    """The real service: serving plain transports never loads TLS."""

    timeout = 60

    @inlineCallbacks
    def test_plain_traffic_and_aborted_websockets_do_not_load_tls(self) -> Any:
        directory = os.path.abspath(self.mktemp())
        proto = spawn(self, [*RUN, "--config", write_config(directory)], directory)
        port = yield proto.serving()
        pid = proto.transport.pid
        self.assertFalse(tls_mapped(pid))
        response, _ = yield HTTPClient(self).get(f"http://127.0.0.1:{port}/rpc/EM.GetStatus?id=0")
        self.assertEqual(response.code, 200)
        for _ in range(3):
            # Autobahn asks "was that a TLS error?" on every abnormal close.
            client = _Upgrade()
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            yield client.upgraded
            self.assertIn(b" 101 ", client.head.split(b"\r\n")[0] + b" ")
            client.transport.abortConnection()
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(proto.stderr, b"")
        self.assertFalse(tls_mapped(pid), "plain traffic loaded TLS")
        proto.transport.signalProcess("TERM")
        yield proto.ended


class StandInTests(SynchronousTestCase):
    """The stand-in itself, in this process (where TLS is loaded already)."""

    def test_stand_in_forwards_calls_and_attributes_to_the_real_object(self) -> None:
        from twisted.internet.protocol import Factory
        from twisted.internet.ssl import CertificateOptions
        from twisted.protocols import tls

        stand_in = lazytls.StandIn("TLSMemoryBIOFactory")
        self.assertIs(stand_in.__class__, lazytls.StandIn)
        self.assertTrue(stand_in)  # "is not None" / truthiness: TLS is available
        self.assertIs(stand_in.noisy, tls.TLSMemoryBIOFactory.noisy)
        factory = stand_in(CertificateOptions(), True, Factory())
        self.assertIsInstance(factory, tls.TLSMemoryBIOFactory)
        self.assertIn("loaded on first use", repr(stand_in))

    def test_load_refuses_while_hidden(self) -> None:
        self.patch(sys, "meta_path", [lazytls._finder, *sys.meta_path])
        self.assertRaises(ImportError, lazytls.load)
        with self.assertRaises(ImportError) as caught:
            lazytls._finder.find_spec("OpenSSL.SSL")
        self.assertIn("first use", str(caught.exception))

