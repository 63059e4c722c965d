"""What a LAN attacker can do with forged UDP sources, bounded (issue #22 items 10-12), pure parts."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from meteremu.devices.shelly.clients import ClientTracker
from meteremu.devices.shelly.options import ScalingOptions
from meteremu.devices.shelly.rpc import CallContext
from meteremu.devices.shelly.udp import LARGE_ANSWER, AnswerBudget
from meteremu.ratelog import RateLimitedLog


def poll(tracker: ClientTracker, ip: str) -> None:
    tracker.observe("EM.GetStatus", CallContext("udp", ip))


class SpoofedBatteriesTests(SynchronousTestCase):
    def test_spoofed_pollers_cannot_dilute_the_real_battery_below_the_cap(self) -> None:
        clock = Clock()
        tracker = ClientTracker(clock, ScalingOptions(mode="divide"))
        real = CallContext("udp", "192.168.1.20")
        for _ in range(2):
            tracker.observe("EM.GetStatus", real)
            clock.advance(1)
        self.assertEqual(tracker.scale_for(real), 1.0)
        for i in range(2000):  # 2,000 forged sources, each polling twice
            ip = f"10.0.{i // 250}.{i % 250}"
            poll(tracker, ip)
            poll(tracker, ip)
        self.assertEqual(tracker.battery_count(), 8)
        self.assertEqual(tracker.scale_for(real), 1 / 8)  # not 1/2001
        self.assertEqual(tracker.refused_batteries, 2000 - 7)
        self.assertIn("192.168.1.20", tracker.active_batteries())

    def test_the_real_battery_keeps_its_place_while_forged_ones_expire(self) -> None:
        clock = Clock()
        tracker = ClientTracker(clock, ScalingOptions(mode="divide", ttl=30, max_batteries=2))
        for ip in ("192.168.1.20", "10.0.0.1"):
            poll(tracker, ip)
            poll(tracker, ip)
        for _ in range(10):  # the real one keeps polling; the forged one stopped
            clock.advance(5)
            poll(tracker, "192.168.1.20")
        self.assertEqual(tracker.active_batteries(), ["192.168.1.20"])
        poll(tracker, "192.168.1.21")
        poll(tracker, "192.168.1.21")  # a second real battery finds the slot free again
        self.assertEqual(tracker.active_batteries(), ["192.168.1.20", "192.168.1.21"])

    def test_forgetting_the_oldest_client_keeps_the_books_straight(self) -> None:
        clock = Clock()
        tracker = ClientTracker(clock, ScalingOptions(mode="divide"), max_clients=3)
        for ip in ("a", "b", "c", "d", "e"):
            poll(tracker, ip)
            clock.advance(0.1)
        self.assertEqual([c.ip for c in tracker.clients.values()], ["c", "d", "e"])
        self.assertEqual(sorted(tracker._ips), ["c", "d", "e"])
        poll(tracker, "c")  # seen again: now the most recent
        poll(tracker, "f")
        self.assertEqual([c.ip for c in tracker.clients.values()], ["e", "c", "f"])


class AnswerBudgetTests(SynchronousTestCase):
    def test_small_answers_are_never_limited(self) -> None:
        budget = AnswerBudget()
        self.assertTrue(all(budget.allow("10.0.0.1", LARGE_ANSWER, 0.0) for _ in range(1000)))

    def test_large_answers_a_burst_then_one_a_second_per_source(self) -> None:
        budget = AnswerBudget(per_second=1.0, burst=3.0)
        self.assertEqual([budget.allow("10.0.0.1", 1385, 0.0) for _ in range(5)],
                         [True, True, True, False, False])
        self.assertTrue(budget.allow("10.0.0.2", 1385, 0.0))  # per source
        self.assertFalse(budget.allow("10.0.0.1", 1385, 0.5))
        self.assertTrue(budget.allow("10.0.0.1", 1385, 1.0))
        self.assertFalse(budget.allow("10.0.0.1", 1385, 1.1))


class RateLimitedLogTests(SynchronousTestCase):
    def test_one_line_per_kind_per_interval_then_a_count(self) -> None:
        events: list[dict[str, object]] = []
        clock = Clock()
        limited = RateLimitedLog(Logger(namespace="test", observer=events.append), clock, interval=60)
        for i in range(850):
            limited.warn("send", "cannot answer {addr}", addr=f"10.0.0.{i % 250}")
        limited.warn("other", "something else")
        self.assertEqual([e["log_format"] for e in events], ["cannot answer {addr}", "something else"])
        self.assertEqual(limited.suppressed, 849)
        clock.advance(60)
        limited.warn("send", "cannot answer {addr}", addr="10.0.0.9")
        self.assertEqual(events[-1]["held"], 849)
        self.assertIn("more like it", str(events[-1]["log_format"]))
        self.assertEqual(events[-1]["log_level"], LogLevel.warn)
