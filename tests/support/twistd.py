"""A real twistd process for tests: spawn it, know its HTTP port, read what it said.

The process runs the *installed* package (as a user or systemd would), from
a temporary working directory so nothing in the checkout can shadow it.
"""

from __future__ import annotations

import os
import re
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Twistd(ProcessProtocol):
    """Collects output; ``serving()`` fires with the HTTP port, ``ended`` with the exit."""

    def __init__(self) -> None:
        self.output = b""
        self.stderr = b""
        self.port: int | None = None
        self._waiting: list[Deferred[int]] = []
        self.ended: Deferred[object] = Deferred()

    def serving(self) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        if self.port is not None:
            d.callback(self.port)
        else:
            self._waiting.append(d)
        return d

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = re.search(rb"serving on HTTP port\(s\) (\d+)", self.output)
        if match and self.port is None:
            self.port = int(match.group(1))
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(self.port)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(reason)
        self.ended.callback(reason.value)


def spawn(case: TestCase, args: list[str], cwd: str, wrap: list[str] | None = None) -> Twistd:
    """Run twistd with ``args``; ``wrap`` prefixes the command (``ip netns exec <ns>``)."""
    proto = Twistd()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    env["PYTHONUNBUFFERED"] = "1"
    argv = [*(wrap or []), TWISTD, *args]
    transport = reactor.spawnProcess(proto, argv[0], argv, env=env, path=cwd)

    def cleanup() -> Deferred[object] | None:
        if proto.ended.called:
            return None
        try:
            transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass  # exited; processEnded is on its way
        return proto.ended

    case.addCleanup(cleanup)
    return proto


def write_config(directory: str, port: int = 0, extra: str = "") -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "meteremu.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"""
server: {{host: 127.0.0.1, http_port: {port}}}
meters:
  grid:
    source: {{type: simulator, interval: 100ms, speed: 60}}
store: {{path: {os.path.join(directory, 'state.db')}, persist_interval: 1h}}
{extra}""")
    return path


RUN = ["-n", "--pidfile=", "--logfile=-", "meteremu"]
