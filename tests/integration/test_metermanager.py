"""The meter manager: meters, their sources and run-time changes (no network)."""

from __future__ import annotations

import os

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from meteremu.metermanager import MeterManager
from meteremu.store import Store
from tests.support.shared.metermanager import meters


class StoredCountersTests(TestCase):
    @inlineCallbacks
    def test_counters_are_saved_and_restored(self) -> None:
        path = os.path.join(self.mktemp(), "state.db")
        clock = Clock()
        store = Store(path, 30, clock=clock)
        store.startService()
        manager = MeterManager(clock, store, meters(grid={}))
        manager.meters["grid"].energy.phases[0].import_wh = 123.0
        yield store.stopService()
        again = MeterManager(clock, Store(path, 30, clock=clock), meters(grid={}))
        self.assertEqual(again.meters["grid"].energy.phases[0].import_wh, 123.0)
