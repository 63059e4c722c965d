"""The dashboard: /ui (static page), /ui/power, POST /ui/train, energy today,
with and without forecasting, and an end-to-end run in headless Chromium."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.days import DayLedger
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.web.dashboard import Dashboard
from meteremu.web.history import compose, downsample, group_means, step_for


class DownsampleTests(SynchronousTestCase):
    def test_means_of_equal_slices(self):
        points = [(float(t), float(t % 2)) for t in range(100)]
        self.assertEqual(downsample(points, 200), points)
        out = downsample(points, 10)
        self.assertEqual(len(out), 10)
        self.assertEqual(out[0], (4.5, 0.5))
        self.assertEqual([round(p[0], 1) for p in out][-1], 94.5)
        self.assertEqual(downsample([], 5), [])


class FakeForecast:
    def __init__(self) -> None:
        self.running = False

    def training_status(self) -> dict[str, Any]:
        return {"state": "running" if self.running else "idle", "progress": 0.25 if self.running else 0.0}

    def train_now(self) -> Any:
        if self.running:
            return None
        self.running = True
        return succeed(None)

    def view(self, meter: str, span: float) -> dict[str, Any]:
        return {"forecast": [(120.0, 7.0)], "model": {"mae": 1.0},
                "baselines": {"persistence": {"mae": 2.0}, "seasonal_naive": None}, "skill": 0.5,
                "resolution": 10.0}

    def history(self, meter: str, since: float, step: float) -> Deferred[list[tuple[float, float]]]:
        return succeed([(100.0, 5.0), (110.0, 6.0)])

    def backfill(self, meter: str) -> tuple[list[tuple[float, float, str]], None]:
        return [(0.0, 110.0, "simulated")], None


class DashboardUnitTests(SynchronousTestCase):
    def test_training_conflicts_and_view(self):
        clock = Clock()
        meters = MeterSet()
        meters.add(Meter("grid", clock))
        dashboard = Dashboard(meters, clock, DayLedger(meters, None, clock), forecast=FakeForecast())
        code, body = dashboard.train()
        self.assertEqual((code, body["training"]["state"], body["training"]["enabled"]), (202, "running", True))
        code, body = dashboard.train()
        self.assertEqual((code, body["error"]), (409, "training is already running"))
        code, body = self.successResultOf(ensureDeferred(dashboard.power(None)))
        self.assertEqual(code, 200)
        self.assertEqual(body["forecast"], [[120.0, 7.0]])
        self.assertEqual(body["history"], [[100.0, 5.0], [110.0, 6.0]])
        self.assertEqual([(p["source"], p["points"], p["label"]) for p in body["history_parts"]],
                         [("backfill", 1, "simulated"), ("dataset", 1, body["history_parts"][1]["label"])])
        self.assertEqual(body["power"], {"total": None, "a": None, "b": None, "c": None})
        self.assertEqual((body["skill"], body["forecasting"]), (0.5, True))
        self.assertEqual(self.successResultOf(ensureDeferred(dashboard.power("nope")))[0], 404)


class HistoryTests(SynchronousTestCase):
    """Which source each part of the chart's history came from (meteremu.web.history)."""

    def test_native_resolution_up_to_six_hours_then_whole_multiples(self):
        self.assertEqual(step_for(6 * 3600, 10.0), 10.0)
        self.assertEqual(step_for(24 * 3600, 10.0), 40.0)
        self.assertEqual(step_for(7 * 86400, 10.0), 260.0)
        self.assertLessEqual(7 * 86400 / step_for(7 * 86400, 10.0), 2400)

    def test_group_means_by_aligned_slot(self):
        points = [(0.0, 1.0), (10.0, 3.0), (20.0, 5.0), (30.0, 7.0)]
        self.assertEqual(group_means(points, 20.0), [(0.0, 2.0), (20.0, 6.0)])
        self.assertEqual(group_means(points, 10.0), points)

    def test_parts_dataset_backfill_and_ring(self):
        dataset = [(float(t), 1.0) for t in range(0, 100, 10)]
        ring = [(95.0, 9.0), (101.0, 2.0), (102.0, 3.0)]
        points, parts = compose(dataset, ring, since=-1.0, span=200.0, resolution=10.0,
                                ranges=[(0.0, 50.0, "simulated")])
        self.assertEqual(points[-2:], [(101.0, 2.0), (102.0, 3.0)])  # the ring only after the last bucket
        self.assertEqual([(p.source, p.start, p.end, p.points, p.resolution) for p in parts],
                         [("backfill", 0.0, 50.0, 5, 10.0), ("dataset", 50.0, 100.0, 5, 10.0),
                          ("ring", 101.0, 102.0, 2, None)])
        self.assertEqual(parts[0].label, "simulated")

    def test_ring_only_without_a_dataset(self):
        ring = [(float(t), 1.0) for t in range(100)]
        points, parts = compose([], ring, since=49.5, span=60.0, resolution=None)
        self.assertEqual(len(points), 50)
        self.assertEqual([(p.source, p.start, p.end) for p in parts], [("ring", 50.0, 99.0)])
