"""Contracts with other libraries' internals (``meteremu.compat``).

Each test here pins one thing a ``meteremu.compat`` module relies on and
Twisted or Autobahn does not promise: an upgrade that changes it fails here,
with the module to look at, instead of in the field. ``meteremu.compat.lazytls``
has its own, larger contract suite in ``tests/test_lazytls.py`` (the names it
restores are compared with the installed Twisted's source).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase

from meteremu.compat import autobahn_server


class AutobahnServerContractTests(SynchronousTestCase):
    """``compat.autobahn_server`` implements the adapter contract Autobahn's core calls."""

    def core_source(self) -> str:
        from autobahn.websocket import protocol

        return inspect.getsource(protocol)

    def test_every_hook_the_core_calls_is_glued(self) -> None:
        called = set(re.findall(r"self\.(_on[A-Z]\w*)\(", self.core_source()))
        self.assertIn("_onMessage", called)  # the scan itself works
        glue = autobahn_server.WebSocketServerProtocol
        missing = sorted(name for name in called if name not in vars(glue))
        self.assertEqual(missing, [], "Autobahn's core calls hooks compat/autobahn_server.py does not "
                                      "forward: add them (see autobahn.twisted.websocket)")

    def test_the_core_has_the_entry_points_the_glue_calls(self) -> None:
        from autobahn.websocket import protocol

        for name in ("_connectionMade", "_connectionLost", "_dataReceived"):
            self.assertTrue(callable(getattr(protocol.WebSocketProtocol, name, None)), name)
        self.assertIn("self._closeConnection(", self.core_source())

    def test_prepared_message_frames_one_text_message(self) -> None:
        frame = autobahn_server.PreparedMessage(b"hello", False, False, True).payloadHybi
        self.assertEqual(frame, b"\x81\x05hello")  # FIN + text, unmasked, length 5


class QuietClientServiceContractTests(SynchronousTestCase):
    """``compat.client_service``: ClientService still logs through its ``_log``, and ours is quiet."""

    def test_the_retry_line_is_filed_at_debug(self) -> None:
        from twisted.application.internet import ClientService
        from twisted.internet.defer import fail
        from twisted.internet.task import Clock
        from twisted.logger import Logger, LogLevel, globalLogPublisher

        from meteremu.compat.client_service import QuietClientService

        self.assertIsInstance(vars(ClientService).get("_log"), Logger,
                              "ClientService has no class attribute _log: see compat/client_service.py")

        class Refused:
            def connect(self, factory: Any) -> Any:
                return fail(ConnectionRefusedError("no"))

        from meteremu.logs import set_level

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        set_level("debug")  # at the default level (info) the line is not even published
        self.addCleanup(set_level, "info")
        service = QuietClientService(Refused(), Factory(), retryPolicy=lambda n: 5.0, clock=Clock())
        service.startService()
        self.addCleanup(service.stopService)
        retries = [e for e in events if "Scheduling retry" in (e.get("log_format") or "")]
        self.assertEqual(len(retries), 1, events)
        self.assertEqual(retries[0]["log_level"], LogLevel.debug)
        self.assertTrue(retries[0]["log_namespace"].startswith("meteremu."), retries[0])  # our filtered stream
