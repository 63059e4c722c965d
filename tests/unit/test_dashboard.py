"""The dashboard: /ui (static page), /ui/power, POST /ui/train, energy today,
with and without forecasting, and an end-to-end run in headless Chromium."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.days import DayLedger
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.web.dashboard import Dashboard, downsample


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
        return {"history": [(100.0, 5.0), (110.0, 6.0)], "forecast": [(120.0, 7.0)], "model": {"mae": 1.0},
                "baselines": {"persistence": {"mae": 2.0}, "seasonal_naive": None}, "skill": 0.5,
                "resolution": 10.0}


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
        code, body = dashboard.power(None)
        self.assertEqual(code, 200)
        self.assertEqual(body["forecast"], [[120.0, 7.0]])
        self.assertEqual(body["history"], [[100.0, 5.0], [110.0, 6.0]])
        self.assertEqual(body["power"], {"total": None, "a": None, "b": None, "c": None})
        self.assertEqual((body["skill"], body["forecasting"]), (0.5, True))
        self.assertEqual(dashboard.power("nope")[0], 404)
