"""WebSocket RPC on /rpc and NotifyStatus push (spec §2.3, §2.4, §6.1; checks 21-24).

Three layers:

- ``NotifyHubTests``: the hub alone, on a ``task.Clock`` with fake subscribers,
  so throttling, epsilon and the stale/recovery transitions are deterministic.
- ``WebSocketTests``: a real meteremu on port 0 and an Autobahn client.
- ``AioshellyTests``: aioshelly connecting as Home Assistant does.

Readings are pushed by hand (the simulator runs with ``interval: 1h`` and so
samples once at start); nothing waits on a fixed sleep: every wait is a
Deferred fired by a callback, with a timeout.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.devices.shelly import hub as shelly_hub
from meteremu.devices.shelly.hub import NotifyHub
from meteremu.devices.shelly.options import Options
from meteremu.devices.shelly.rpc import CallContext
from tests.support import (
    make_device,
    sample_reading,
)
from tests.support.shared.shelly_ws import differs, merged


class FakeSubscriber:
    """What NotifyHub needs of a WebSocket client: ctx, src, known, send()."""

    def __init__(self, src: str = "fake-1", peer: str = "10.0.0.5") -> None:
        self.src = src
        self.ctx = CallContext("ws", peer, src, "127.0.0.1", None)
        self.known: dict[str, dict[str, Any]] = {}
        self.last_notified = float("-inf")
        self.frames: list[dict[str, Any]] = []
        self.payloads: list[bytes] = []

    def send(self, payload: bytes) -> None:
        # The bytes the wire would carry.
        self.payloads.append(payload)
        self.frames.append(json.loads(payload))

    def methods(self) -> list[str]:
        return [f["method"] for f in self.frames]

    def of(self, method: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["method"] == method]


class NotifyHubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.device = make_device(self.clock, stale_after=10.0)
        self.meter = self.device.meter
        self.t = 1_700_000_000.0
        self.push((2166.2, 3.6, -244.0))

    def hub(self, interval: float = 1.0, epsilon: float = 0.1) -> NotifyHub:
        hub = NotifyHub(self.device, self.clock, interval, epsilon)
        hub.start()
        self.addCleanup(hub.stop)
        return hub

    def push(self, powers: tuple[float, float, float], dt: float = 0.0) -> None:
        """A new reading ``dt`` seconds (of the clock) after the last one."""
        if dt:
            self.clock.advance(dt)
        self.t += max(dt, 0.001)
        self.assertTrue(self.meter.update(sample_reading(self.t, powers)))

    def em(self, client: FakeSubscriber) -> dict[str, Any]:
        return self.device.core.call("EM.GetStatus", {"id": 0}, client.ctx)

    def test_full_status_on_subscribe(self) -> None:
        hub = self.hub()
        client = FakeSubscriber()
        self.clock.advance(42.5)
        self.meter.alive()  # stays fresh (arrival-based freshness)
        hub.subscribe(client)
        self.assertEqual(client.methods(), ["NotifyFullStatus"])
        frame = client.frames[0]
        self.assertEqual(frame["src"], self.device.identity.device_id)
        self.assertEqual(frame["dst"], "fake-1")
        self.assertEqual(frame["params"]["ts"], 42.5)
        self.assertEqual(frame["params"]["em:0"], self.em(client))
        self.assertIn("sys", frame["params"])
        self.assertIn("emdata:0", frame["params"])
        self.assertEqual(hub.clients, [client])
        self.assertEqual(hub.sent, 1)

    def test_nothing_without_subscribers(self) -> None:
        self.hub()
        self.push((100.0, 0.0, 0.0), dt=1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_first_change_is_sent_at_once_then_throttled(self) -> None:
        hub = self.hub(interval=1.0)
        client = FakeSubscriber()
        hub.subscribe(client)
        self.push((1000.0, 3.6, -244.0))
        self.clock.advance(0)
        self.assertEqual(client.methods(), ["NotifyFullStatus", "NotifyStatus"])
        self.assertEqual(client.frames[1]["params"]["em:0"]["a_act_power"], 1000.0)
        self.assertEqual(client.frames[1]["params"]["ts"], 0.0)

        # Several readings within one interval: one NotifyStatus at its end,
        # carrying the latest values.
        self.push((1100.0, 3.6, -244.0), dt=0.1)
        self.push((1200.0, 3.6, -244.0), dt=0.2)
        self.push((1300.0, 3.6, -244.0), dt=0.3)
        self.clock.advance(0.39)  # t = 0.99
        self.assertEqual(len(client.of("NotifyStatus")), 1)
        self.clock.advance(0.01)  # t = 1.0
        self.assertEqual(len(client.of("NotifyStatus")), 2)
        last = client.of("NotifyStatus")[-1]
        self.assertEqual(last["params"]["em:0"]["a_act_power"], 1300.0)
        self.assertEqual(last["params"]["ts"], 1.0)
        # No flush left pending (the freshness watch runs while anyone listens).
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.func == hub.flush], [])

    def test_at_most_one_notify_per_interval(self) -> None:
        hub = self.hub(interval=1.0)
        client = FakeSubscriber()
        hub.subscribe(client)
        times: list[float] = []
        original = client.send

        def stamp(payload: bytes) -> None:
            times.append(self.clock.seconds())
            original(payload)

        client.send = stamp  # type: ignore[method-assign]
        # A reading every 0.1 s for 5 s, each a clear change.
        for i in range(50):
            self.push((1000.0 + 10 * i, 3.6, -244.0), dt=0.1)
        self.clock.advance(1.0)
        self.assertEqual(client.of("NotifyFullStatus"), [client.frames[0]])
        statuses = client.of("NotifyStatus")
        self.assertGreaterEqual(len(statuses), 5)
        self.assertLessEqual(len(statuses), 6)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        for gap in gaps:
            self.assertGreaterEqual(gap, 1.0 - 1e-9)
        self.assertEqual(statuses[-1]["params"]["em:0"]["a_act_power"], 1490.0)

    def test_change_below_epsilon_is_not_sent(self) -> None:
        hub = self.hub(interval=1.0, epsilon=1.0)
        client = FakeSubscriber()
        hub.subscribe(client)
        # 0.4 W steps, 1 ms apart (energy moves by far less than 1 Wh).
        self.push((2166.6, 3.6, -244.0), dt=0.001)
        self.clock.advance(1.0)
        self.push((2167.0, 3.6, -244.0), dt=0.001)
        self.clock.advance(1.0)
        self.assertEqual(client.methods(), ["NotifyFullStatus"], "a change within epsilon was sent")
        # The drift adds up against what the client was told: 2166.2 -> 2167.4.
        self.push((2167.4, 3.6, -244.0), dt=0.001)
        self.clock.advance(1.0)
        self.assertEqual(client.methods(), ["NotifyFullStatus", "NotifyStatus"])
        em = client.frames[-1]["params"]["em:0"]
        self.assertEqual(em["a_act_power"], 2167.4)
        self.assertEqual(em["id"], 0)
        self.assertNotIn("a_voltage", em)
        self.assertNotIn("b_act_power", em)

    def test_by_default_every_visible_change_is_sent(self) -> None:
        """Default options: what a Home Assistant user sees equals a poll, to the last decimal.

        The readings move currents by a few mA and powers by a tenth of a watt
        (the case that made HA show a stale current next to a new power).
        """
        self.assertEqual(Options().notify_epsilon, 0.0)
        hub = self.hub(interval=1.0, epsilon=Options().notify_epsilon)
        client = FakeSubscriber()
        hub.subscribe(client)
        view = client.frames[0]["params"]
        for powers in [(2166.2, 3.6, -247.2), (2166.3, 3.6, -247.2), (2166.3, 3.7, -247.2),
                       (1234.5, 3.6, -244.0), (1234.5, 3.6, -243.99)]:
            self.push(powers, dt=1.0)
            self.clock.advance(0)
            if client.frames[-1]["method"] == "NotifyStatus":
                view = merged(view, client.frames[-1]["params"])
            fresh = self.device.core.call("Shelly.GetStatus", {}, client.ctx)
            for component in ("em:0", "emdata:0"):
                self.assertEqual(view[component], fresh[component], (powers, component))

    def test_deadband_for_power_and_its_current_only(self) -> None:
        """A positive epsilon is watts: currents get the matching deadband, voltage none."""
        from meteremu.devices.shelly.notify import changed_fields, threshold

        self.assertEqual(threshold("a_act_power", 10.0), 10.0)
        self.assertEqual(threshold("total_aprt_power", 10.0), 10.0)
        self.assertAlmostEqual(threshold("c_current", 10.0), 10.0 / 230)
        self.assertEqual(threshold("a_voltage", 10.0), 0.0)
        self.assertEqual(threshold("a_pf", 10.0), 0.0)
        self.assertEqual(threshold("a_act_power", 0.0), 0.0)
        old = {"id": 0, "a_act_power": 100.0, "a_current": 0.435, "a_voltage": 230.0}
        self.assertEqual(changed_fields(old, {**old, "a_act_power": 109.9, "a_current": 0.478}, 10.0), {})
        self.assertEqual(changed_fields(old, {**old, "a_voltage": 230.1}, 10.0),
                         {"id": 0, "a_voltage": 230.1})
        self.assertEqual(changed_fields(old, {**old, "a_act_power": 100.1}, 0.0),
                         {"id": 0, "a_act_power": 100.1})

    def test_notify_status_holds_only_changes_and_merges_to_fresh_status(self) -> None:
        hub = self.hub(interval=1.0, epsilon=0.1)
        client = FakeSubscriber()
        hub.subscribe(client)
        full = client.frames[0]["params"]
        self.push((2166.2, 503.6, -244.0), dt=1.0)  # only phase b moves
        self.clock.advance(0)
        note = client.frames[-1]
        self.assertEqual(note["method"], "NotifyStatus")
        em = note["params"]["em:0"]
        self.assertEqual(set(em), {"id", "b_current", "b_act_power", "b_aprt_power",
                                   "total_current", "total_act_power", "total_aprt_power"})
        fresh = self.device.core.call("Shelly.GetStatus", {}, client.ctx)
        result = merged(full, note["params"])
        for component in ("em:0", "emdata:0"):
            for key, value in fresh[component].items():
                self.assertFalse(differs(result[component][key], value, 0.1), (component, key))

    def test_stale_meter_is_notified_without_a_new_reading(self) -> None:
        """A meter going stale is an error-condition change: it must be pushed.

        Nothing but the clock moves here; the hub itself has to notice.
        """
        hub = self.hub(interval=1.0)
        client = FakeSubscriber()
        hub.subscribe(client)
        self.clock.advance(10.0 + 5.0)  # past stale_after, and several intervals
        self.assertIn("NotifyStatus", client.methods(),
                      "no notification after the meter went stale (on_stale: error)")
        em = client.of("NotifyStatus")[-1]["params"]["em:0"]
        self.assertEqual(em.get("errors"), ["power_meter_failure"])

    def test_failure_then_recovery(self) -> None:
        hub = self.hub(interval=1.0)
        client = FakeSubscriber()
        hub.subscribe(client)
        self.clock.advance(11.0)  # stale (stale_after 10 s), policy "error"
        hub.flush()
        self.assertEqual(client.methods(), ["NotifyFullStatus", "NotifyStatus"])
        params = client.frames[-1]["params"]
        em = params["em:0"]
        self.assertEqual(em["errors"], ["power_meter_failure"])
        self.assertIsNone(em["a_act_power"])
        self.assertIsNone(em["total_act_power"])
        self.assertEqual(em["id"], 0)
        self.assertNotIn("emdata:0", params)  # the counters did not move
        self.assertEqual(params["ts"], 11.0)

        # The meter recovers: "errors" must disappear, which a merge cannot
        # do, so the client gets a whole new status.
        self.push((500.0, 3.6, -244.0), dt=1.0)
        self.clock.advance(1.0)
        self.assertEqual(client.methods()[-1], "NotifyFullStatus")
        em = client.frames[-1]["params"]["em:0"]
        self.assertNotIn("errors", em)
        self.assertEqual(em["a_act_power"], 500.0)
        self.assertNotIn("errors", client.known["em:0"])

    def test_hold_policy_sends_no_failure(self) -> None:
        self.device = make_device(self.clock, Options(meter="grid", on_stale="hold"), stale_after=10.0)
        self.meter = self.device.meter
        self.push((2166.2, 3.6, -244.0))
        hub = self.hub(interval=1.0)
        client = FakeSubscriber()
        hub.subscribe(client)
        self.clock.advance(11.0)
        hub.flush()
        self.assertEqual(client.methods(), ["NotifyFullStatus"])

    def test_each_client_gets_its_own_diff(self) -> None:
        hub = self.hub(interval=1.0)
        first = FakeSubscriber("first")
        hub.subscribe(first)
        self.push((1000.0, 3.6, -244.0), dt=1.0)
        self.clock.advance(0)
        second = FakeSubscriber("second", peer="10.0.0.6")  # joins after the change
        hub.subscribe(second)
        self.push((1000.0, 3.6, -100.0), dt=1.0)
        self.clock.advance(1.0)
        self.assertEqual(first.methods(), ["NotifyFullStatus", "NotifyStatus", "NotifyStatus"])
        self.assertEqual(second.methods(), ["NotifyFullStatus", "NotifyStatus"])
        self.assertNotIn("a_act_power", second.frames[-1]["params"]["em:0"])
        self.assertEqual(second.frames[-1]["params"]["em:0"]["c_act_power"], -100.0)
        self.assertEqual([f["dst"] for f in first.frames], ["first"] * 3)
        self.assertEqual([f["dst"] for f in second.frames], ["second"] * 2)

    def test_clients_told_the_same_share_one_diff(self) -> None:
        """200 clients at one scale: one diff and one encoding per flush, not 200."""
        hub = self.hub(interval=1.0)
        clients = [FakeSubscriber(f"c{i}", peer=f"10.0.1.{i % 250}") for i in range(200)]
        for client in clients:
            hub.subscribe(client)
        calls: list[int] = []
        real = shelly_hub.diff_status

        def counting(*args: Any) -> Any:
            calls.append(1)
            return real(*args)

        self.patch(shelly_hub, "diff_status", counting)
        self.push((1000.0, 300.0, -100.0), dt=1.0)
        self.clock.advance(0)
        # First flush: each client still holds its own copy of the full status.
        self.assertEqual(len(calls), 200)
        self.assertEqual(len({id(c.known) for c in clients}), 1, "equal states were not merged")
        del calls[:]
        self.push((1200.0, 300.0, -100.0), dt=1.0)
        self.clock.advance(0)
        self.assertEqual(len(calls), 1)
        # Same notification for everyone, but each addressed to its own src.
        for client in clients:
            self.assertEqual(client.frames[-1]["dst"], client.src)
            self.assertEqual(client.frames[-1]["params"], clients[0].frames[-1]["params"])
        self.assertEqual(client.frames[-1]["params"]["em:0"]["a_act_power"], 1200.0)

    def test_scaled_clients_get_their_own_values(self) -> None:
        """Weighted scaling: each battery is told its own share, diffs per scale."""
        from meteremu.devices.shelly.options import ScalingOptions

        scaling = ScalingOptions(mode="weights", weights={"10.0.0.7": 0.25}, default_weight=1.0)
        self.device = make_device(self.clock, Options(meter="grid", scaling=scaling), stale_after=10.0)
        self.meter = self.device.meter
        self.push((2000.0, 0.0, 0.0))
        hub = self.hub(interval=1.0)
        whole, quarter = FakeSubscriber("whole", peer="10.0.0.6"), FakeSubscriber("quarter", peer="10.0.0.7")
        for client in (whole, quarter):
            for _ in range(2):  # two polls make it a battery (scaling applies to batteries only)
                self.device.core.call("EM.GetStatus", {"id": 0}, client.ctx)
            hub.subscribe(client)
        self.push((4000.0, 0.0, 0.0), dt=1.0)
        self.clock.advance(0)
        self.assertEqual(whole.frames[-1]["params"]["em:0"]["a_act_power"], 4000.0)
        self.assertEqual(quarter.frames[-1]["params"]["em:0"]["a_act_power"], 1000.0)
        self.assertIsNot(whole.known, quarter.known)
        for client in (whole, quarter):
            fresh = self.device.core.call("Shelly.GetStatus", {}, client.ctx)
            view = merged(client.frames[0]["params"], client.frames[-1]["params"])
            for key, value in fresh["em:0"].items():
                self.assertFalse(differs(view["em:0"][key], value, 0.1), (client.src, key))

    def test_late_joiner_merges_to_fresh_status(self) -> None:
        """A client that joined later keeps its own view until the states meet."""
        hub = self.hub(interval=1.0, epsilon=0.1)
        early = FakeSubscriber("early")
        hub.subscribe(early)
        self.push((1000.0, 3.6, -244.0), dt=1.0)
        self.clock.advance(0)
        late = FakeSubscriber("late", peer="10.0.0.6")
        hub.subscribe(late)
        for step, powers in enumerate([(1000.0, 50.0, -244.0), (1000.05, 50.0, -200.0), (3.0, 4.0, 5.0)]):
            self.push(powers, dt=1.0)
            self.clock.advance(0)
            fresh = self.device.core.call("Shelly.GetStatus", {}, early.ctx)
            for client in (early, late):
                view: dict[str, Any] = {}
                for frame in client.frames:
                    view = frame["params"] if frame["method"] == "NotifyFullStatus" else merged(view, frame["params"])
                for component in ("em:0", "emdata:0"):
                    for key, value in fresh[component].items():
                        self.assertFalse(differs(view[component][key], value, 0.1), (step, client.src, component, key))

    def test_watch_runs_only_while_someone_listens(self) -> None:
        hub = self.hub(interval=1.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        client = FakeSubscriber()
        hub.subscribe(client)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the freshness watch
        hub.unsubscribe(client)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heartbeat_every_60_s_without_changes(self) -> None:
        hub = self.hub(interval=1.0)
        client = FakeSubscriber()
        hub.subscribe(client)
        for _ in range(59):
            self.clock.advance(1)
            self.device.meter.alive()  # steady value, source alive: nothing changes
        self.assertEqual(client.methods(), ["NotifyFullStatus"])
        self.clock.advance(1)
        self.device.meter.alive()
        self.assertEqual(client.methods(), ["NotifyFullStatus", "NotifyStatus"])
        self.assertIn("total_act_power", client.frames[-1]["params"]["em:0"])

    def test_unsubscribe_and_stop(self) -> None:
        hub = self.hub(interval=1.0)
        client = FakeSubscriber()
        hub.subscribe(client)
        hub.unsubscribe(client)
        hub.unsubscribe(client)  # twice is harmless
        self.push((1000.0, 3.6, -244.0), dt=1.0)
        self.clock.advance(5)
        self.assertEqual(client.methods(), ["NotifyFullStatus"])

        hub.subscribe(client)
        self.push((1500.0, 3.6, -244.0), dt=1.0)
        self.assertEqual(len([c for c in self.clock.getDelayedCalls() if c.func == hub.flush]), 1)
        hub.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.push((1600.0, 3.6, -244.0), dt=1.0)
        self.clock.advance(5)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(client.methods(), ["NotifyFullStatus", "NotifyFullStatus"])

    def test_one_failing_client_does_not_starve_the_others(self) -> None:
        hub = self.hub(interval=1.0)
        broken, good = FakeSubscriber("broken"), FakeSubscriber("good")
        hub.subscribe(broken)
        hub.subscribe(good)

        def explode(payload: bytes) -> None:
            raise RuntimeError("transport gone")

        broken.send = explode  # type: ignore[method-assign]
        self.push((1000.0, 3.6, -244.0), dt=1.0)
        self.clock.advance(0)
        self.assertEqual(good.methods(), ["NotifyFullStatus", "NotifyStatus"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class NotifyBuildingTests(SynchronousTestCase):
    """The pure pieces of notify.py."""

    def test_notification_bytes_equal_the_generic_encoding(self) -> None:
        from meteremu.devices.shelly import jsonfmt
        from meteremu.devices.shelly.notify import notification, notification_bytes, params_json

        params = {"em:0": {"id": 0, "a_act_power": 12, "a_pf": 0.5}, "emdata:0": {"total_act": 3}}
        for dst in ("ha-1", "é\"\\", "\ud800lone", ""):
            self.assertEqual(
                notification_bytes("shellypro3em-x", dst, "NotifyStatus", params_json(1.7e9, params)),
                jsonfmt.dumpb(notification("shellypro3em-x", dst, "NotifyStatus", 1.7e9, params)))

    def test_diff_status_leaves_known_alone(self) -> None:
        from meteremu.devices.shelly.notify import diff_status

        known = {"em:0": {"id": 0, "a": 1.0, "b": 2.0}}
        snapshot = {"em:0": dict(known["em:0"])}
        diff, new = diff_status(known, {"em:0": {"id": 0, "a": 1.05, "b": 3.0}}, 0.1)
        self.assertEqual(diff, {"em:0": {"id": 0, "b": 3.0}})
        self.assertEqual(new, {"em:0": {"id": 0, "a": 1.0, "b": 3.0}})  # a moved less than epsilon
        self.assertEqual(known, snapshot)
        diff, same = diff_status(known, {"em:0": {"id": 0, "a": 1.05, "b": 2.0}}, 0.1)
        self.assertEqual(diff, {})
        self.assertIs(same, known)
        lost, kept = diff_status({"em:0": {"id": 0, "errors": ["x"]}}, {"em:0": {"id": 0}}, 0.1)
        self.assertIsNone(lost)

    def test_numbers_bools_and_subclasses(self) -> None:
        from meteremu.devices.shelly.notify import changed_fields

        class Float(float):
            pass

        self.assertEqual(changed_fields({"x": 1.0}, {"x": Float(1.05)}, 0.1), {})
        self.assertEqual(changed_fields({"x": True}, {"x": False}, 0.1), {"x": False})
        self.assertEqual(changed_fields({"x": 1}, {"x": True}, 5), {})  # True == 1: unchanged
        self.assertEqual(changed_fields({"x": None}, {"x": 1.0}, 0.1), {"x": 1.0})
