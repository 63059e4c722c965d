"""``logging.level`` filters meteremu's own log events."""

from __future__ import annotations

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from meteremu.logs import logger, set_level


class LevelTests(SynchronousTestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(set_level, "info")

    def messages(self):
        return [e["log_format"] for e in self.events if e.get("log_namespace") == "test.levels"]

    def test_levels(self):
        log = logger("test.levels")
        set_level("info")
        log.debug("d1")
        log.info("i1")
        set_level("debug")
        log.debug("d2")
        set_level("error")
        log.info("i2")
        log.warn("w2")
        log.error("e2")
        self.assertEqual(self.messages(), ["i1", "d2", "e2"])
