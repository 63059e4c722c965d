"""The meter manager: meters, their sources and run-time changes (no network)."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.metermanager import MeterManager
from meteremu.store import Store
from tests.support.shared.metermanager import meters


class MeterManagerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = Store(os.path.join(self.mktemp(), "state.db"), 30, clock=self.clock)
        self.manager = MeterManager(self.clock, self.store, meters(grid={}, garage={"seed": 2}))
        self.manager.startService()
        self.addCleanup(self.manager.stopService)

    def test_built_from_the_config_with_one_running_source_each(self) -> None:
        self.assertEqual(sorted(self.manager.meters), ["garage", "grid"])
        self.assertEqual(sorted(self.manager.sources), ["garage", "grid"])
        self.assertTrue(all(s.running for s in self.manager.sources.values()))
        self.assertIsNotNone(self.manager.meters["grid"].latest)  # the simulator's first reading

    def test_reconfig_adds_restarts_changed_and_removes(self) -> None:
        grid, garage = self.manager.meters["grid"], self.manager.meters["garage"]
        grid_source, garage_source = self.manager.sources["grid"], self.manager.sources["garage"]
        removed: list[str] = []
        self.manager.meters.subscribe(lambda m: None, lambda m: removed.append(m.name))
        d = self.manager.reconfig(meters(grid={}, garage={"seed": 3}, heat={"seed": 4}))
        self.successResultOf(d)
        self.assertIs(self.manager.sources["grid"], grid_source)  # unchanged: left alone
        self.assertIsNot(self.manager.sources["garage"], garage_source)  # changed: new source
        self.assertFalse(garage_source.running)
        self.assertIs(self.manager.meters["garage"], garage)  # same meter: counters carry on
        self.assertEqual(self.manager.sources["garage"].options.seed, 3)
        self.assertIn("heat", self.manager.meters)
        self.successResultOf(self.manager.reconfig(meters(garage={"seed": 3})))
        self.assertEqual(sorted(self.manager.meters), ["garage"])
        self.assertEqual(sorted(removed), ["grid", "heat"])
        self.assertFalse(grid_source.running)
        self.manager.add(meters(grid={})["grid"])
        self.assertIs(self.manager.meters["grid"], grid)  # revived with its counters

    def test_a_meter_is_added_once(self) -> None:
        self.assertRaises(KeyError, self.manager.add, meters(grid={})["grid"])
