"""The open-files limit of a real twistd process (issue #22, item 9).

Started with a soft limit of 256 under a higher hard limit (as a shell or a
container may leave it), meteremu raises the soft limit to the hard one,
says so once, and serves.
"""

from __future__ import annotations

import os
import resource
import shutil
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ProcessExitedAlready
from twisted.trial.unittest import TestCase

from tests.support.twistd import RUN, TWISTD, Twistd, write_config

SOFT = 256


class OpenFilesTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard <= SOFT:
            raise self.skipTest(f"the hard open-files limit ({hard}) leaves nothing to raise")
        if shutil.which("sh") is None:
            raise self.skipTest("needs sh")

    @inlineCallbacks
    def test_the_soft_limit_is_raised_to_the_hard_one_once(self) -> Any:
        directory = os.path.abspath(self.mktemp())
        config = write_config(directory)
        proto = Twistd()
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
        env["PYTHONUNBUFFERED"] = "1"
        command = f"ulimit -Sn {SOFT} && exec \"$0\" \"$@\""
        transport = reactor.spawnProcess(proto, "/bin/sh", ["sh", "-c", command, TWISTD, *RUN, "--config", config],
                                         env=env, path=directory)

        def stop() -> Any:
            if proto.ended.called:
                return None
            try:
                transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            return proto.ended

        self.addCleanup(stop)
        yield proto.serving().addTimeout(30, reactor)
        with open(f"/proc/{transport.pid}/limits", encoding="ascii") as handle:
            line = next(line for line in handle if line.startswith("Max open files"))
        soft, hard = line.split()[3:5]
        self.assertEqual(soft, hard)
        self.assertNotEqual(soft, str(SOFT))
        output = proto.output.decode(errors="replace")
        self.assertEqual(output.count("open-files limit raised"), 1, output[-2000:])
        self.assertIn(f"open-files limit raised from {SOFT} to {soft}", output)
