"""Client tracking and request-side scaling (pure, on a Clock)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.devices.shelly.clients import THROTTLED, ClientTracker
from meteremu.devices.shelly.options import ScalingOptions
from meteremu.devices.shelly.rpc import CallContext, RpcError


def ctx(ip: str, transport: str = "udp", agent: str | None = None) -> CallContext:
    return CallContext(transport, ip, None, None, agent)


class TrackerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.tracker = ClientTracker(self.clock, ScalingOptions(mode="divide", ttl=30))

    def poll(self, ip: str, transport: str = "udp", method: str = "EM.GetStatus", agent: str | None = None):
        self.tracker.observe(method, ctx(ip, transport, agent))

    def test_battery_after_two_polls_within_ttl(self):
        self.poll("10.0.0.1")
        self.assertFalse(self.tracker.is_battery("10.0.0.1"))
        self.clock.advance(1)
        self.poll("10.0.0.1")
        self.assertTrue(self.tracker.is_battery("10.0.0.1"))

    def test_polls_further_apart_than_ttl_do_not_make_a_battery(self):
        self.poll("10.0.0.1")
        self.clock.advance(31)
        self.poll("10.0.0.1")
        self.assertFalse(self.tracker.is_battery("10.0.0.1"))

    def test_battery_across_transports(self):
        self.poll("10.0.0.1", "udp")
        self.clock.advance(1)
        self.poll("10.0.0.1", "http")
        self.assertTrue(self.tracker.is_battery("10.0.0.1"))
        self.assertEqual(len(self.tracker.overview()), 2)  # one row per transport

    def test_home_assistant_and_browsers_are_not_batteries(self):
        for _ in range(5):
            self.poll("10.0.0.5", "ws", method="Shelly.GetStatus")
            self.poll("10.0.0.6", "http", agent="Mozilla/5.0 (X11; Linux x86_64)")
            self.clock.advance(1)
        self.assertFalse(self.tracker.is_battery("10.0.0.5"))
        self.assertFalse(self.tracker.is_battery("10.0.0.6"))

    def test_divide_counts_active_batteries_and_forgets_after_ttl(self):
        for ip in ("10.0.0.1", "10.0.0.2"):
            self.poll(ip)
            self.poll(ip)
        self.assertEqual(self.tracker.scale_for(ctx("10.0.0.1")), 0.5)
        self.assertEqual(self.tracker.scale_for(ctx("10.0.0.9")), 1.0)  # not a battery: unscaled
        self.clock.advance(20)
        self.poll("10.0.0.1")
        self.clock.advance(15)  # 10.0.0.2 silent for 35 s > ttl
        self.assertEqual(self.tracker.active_batteries(), ["10.0.0.1"])
        self.assertEqual(self.tracker.scale_for(ctx("10.0.0.1")), 1.0)

    def test_overview_rows(self):
        self.clock.advance(100)
        self.poll("10.0.0.1")
        self.clock.advance(1)
        self.poll("10.0.0.1", method="EMData.GetStatus")
        (row,) = self.tracker.overview()
        self.assertEqual(row, {"ip": "10.0.0.1", "transport": "udp", "first_seen": 100.0, "last_seen": 101.0,
                               "requests": 2, "last_method": "EMData.GetStatus", "battery": False})

    def test_min_interval_drops(self):
        tracker = ClientTracker(self.clock, ScalingOptions(min_interval=1.0))
        tracker.observe("EM.GetStatus", ctx("10.0.0.1"))
        self.clock.advance(0.5)
        err = self.assertRaises(RpcError, tracker.observe, "EM.GetStatus", ctx("10.0.0.1"))
        self.assertEqual(err.code, THROTTLED)
        tracker.observe("Sys.GetStatus", ctx("10.0.0.1"))  # only polls are throttled
        tracker.observe("EM.GetStatus", ctx("10.0.0.2"))  # per client
        self.clock.advance(0.5)
        tracker.observe("EM.GetStatus", ctx("10.0.0.1"))  # 1 s after the last *answered* poll

    def test_bounded_number_of_clients(self):
        tracker = ClientTracker(self.clock, max_clients=3)
        for i in range(10):
            self.clock.advance(1)
            tracker.observe("EM.GetStatus", ctx(f"10.0.1.{i}"))
        self.assertEqual([r["ip"] for r in tracker.overview()], ["10.0.1.7", "10.0.1.8", "10.0.1.9"])
