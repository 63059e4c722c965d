"""The emulated CT002/CT003 core on a simulated clock: slots, MAC matching, relay, control, stale policy."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.control import Controller
from meteremu.devices.marstek import ct_codec as codec
from meteremu.devices.marstek.ct import CtDevice, CtIdentity
from meteremu.devices.marstek.options import Ct002Options, Ct003Options, CtOptions
from meteremu.devices.shelly.options import FallbackPolicy
from meteremu.meter import Meter
from tests.support import sample_reading

OWN = "02CA7E000001"


def mac(i: int) -> str:
    return f"AABBCCDDEE{i:02X}"


class Harness:
    def __init__(self, options: CtOptions) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.meter = Meter("grid", self.clock, stale_after=10.0, source_type="test")
        controller = Controller(self.clock, options.control)
        controller.follow(self.meter)
        self.device = CtDevice(options, CtIdentity(OWN, "ct002-x", options.ct_type), self.meter, self.clock,
                               controller)

    def publish(self, a: float, b: float = 0.0, c: float = 0.0) -> None:
        self.meter.update(sample_reading(self.clock.seconds(), powers=(a, b, c)))

    def ask(self, battery: int, phase: str = "A", power: int = 0, ct_mac: str = "",
            participate: bool | None = None, kind: str = "VNSE3-0") -> codec.CtResponse | str:
        request = codec.CtRequest(kind, mac(battery), "HME-4", ct_mac, phase, power, participate)
        reply, why = self.device.answer(codec.encode_request(request), f"127.0.0.{battery}", 22222)
        if reply is None:
            assert why is not None
            return why
        return codec.parse_response(reply)[1]


class SlotTests(SynchronousTestCase):
    def test_nine_slots_then_eviction_after_missed_cycles(self) -> None:
        h = Harness(Ct002Options(mode="relay"))
        h.publish(100.0)
        for i in range(1, 10):
            self.assertNotEqual(h.ask(i), "slots_full")
        self.assertEqual(h.ask(10), "slots_full")
        # batteries 2..9 keep polling every second; battery 1 stops
        for _ in range(6):
            h.clock.advance(1.0)
            for i in range(2, 10):
                h.ask(i)
        self.assertEqual(h.ask(10), "slots_full")  # battery 1's interval is unknown: 30 s
        for _ in range(26):
            h.clock.advance(1.0)
            for i in range(2, 10):
                h.ask(i)
        self.assertNotEqual(h.ask(10), "slots_full")
        self.assertNotIn(mac(1), h.device.clients.active_batteries())

    def test_an_evicted_battery_leaves_the_controller(self) -> None:
        h = Harness(Ct002Options())
        h.publish(100.0)
        for _ in range(4):
            h.ask(1, "A", 300)
            h.ask(2, "B", 200)
            h.clock.advance(1.0)
        assert h.device.controller is not None
        self.assertEqual(set(h.device.controller.batteries), {mac(1), mac(2)})
        for _ in range(8):  # battery 2 stops polling
            h.ask(1, "A", 300)
            h.clock.advance(1.0)
        self.assertEqual(set(h.device.controller.batteries), {mac(1)})

    def test_a_known_cadence_is_evicted_after_two_intervals(self) -> None:
        h = Harness(Ct002Options(mode="relay", eviction_floor=5.0))
        h.publish(100.0)
        for _ in range(4):
            h.ask(1)
            h.clock.advance(1.0)
        h.clock.advance(3.5)  # 4.5 s since its last poll: twice its 1 s interval, but the floor is 5 s
        self.assertIn(mac(1), h.device.clients.active_batteries())
        h.clock.advance(1.0)
        self.assertNotIn(mac(1), h.device.clients.active_batteries())


class MatchingTests(SynchronousTestCase):
    def test_own_mac_answers_only_its_mac_or_the_null_mac(self) -> None:
        h = Harness(Ct002Options(ct_mac="own"))
        h.publish(100.0)
        self.assertEqual(h.ask(1, ct_mac="112233445566"), "other_ct")
        for asked in ("000000000000", OWN, ""):
            answer = h.ask(1, ct_mac=asked)
            assert isinstance(answer, codec.CtResponse)
            self.assertEqual(answer.ct_mac, OWN)
            self.assertEqual((answer.battery_mac, answer.battery_type), (mac(1), "VNSE3-0"))

    def test_echo_answers_the_mac_asked_for(self) -> None:
        h = Harness(Ct002Options())
        h.publish(100.0)
        answer = h.ask(1, ct_mac="112233445566")
        assert isinstance(answer, codec.CtResponse)
        self.assertEqual((answer.ct_mac, answer.ct_type), ("112233445566", "HME-4"))

    def test_garbage_is_never_answered(self) -> None:
        h = Harness(Ct002Options())
        h.publish(100.0)
        for data in (b"", b"\x01\x02garbage\x03ZZ", b'{"id":1,"method":"EM.GetStatus"}'):
            self.assertEqual(h.device.answer(data, "127.0.0.1", 22222), (None, "garbage"))
        self.assertEqual(h.device.dropped["garbage"], 3)


class RelayTests(SynchronousTestCase):
    def test_sums_and_counts_per_bucket(self) -> None:
        h = Harness(Ct002Options(mode="relay"))
        h.publish(300.0, -200.0, 50.0)
        h.ask(1, "A", 400)
        h.clock.advance(0.1)
        h.ask(2, "A", -150)
        h.ask(3, "B", 200, kind="HMJ-2", participate=False)  # not following: left out
        h.ask(4, "D", 100)
        h.publish(300.0, -200.0, 50.0)
        answer = h.ask(2, "A", -150)  # the battery answered longest ago (never) gets the new cycle
        assert isinstance(answer, codec.CtResponse)
        self.assertEqual((answer.phase_power, answer.total_power), ((300, -200, 50), 150))
        self.assertEqual(answer.chrg_nb, (2, 0, 0, 1))
        self.assertEqual(answer.chrg_power, (0, -150, 0, 0, 0))
        self.assertEqual(answer.dchrg_power, (0, 400, 0, 0, 100))

    def test_one_answer_per_reading_round_robin(self) -> None:
        h = Harness(Ct002Options(mode="relay"))
        answered: list[int] = []
        for cycle in range(8):
            h.publish(100.0 + cycle)
            for _ in range(3):  # each battery polls three times per reading
                for battery in (1, 2):
                    if isinstance(h.ask(battery), codec.CtResponse):
                        answered.append(battery)
                h.clock.advance(0.3)
        self.assertEqual(answered, [1, 2] * 4)
        indices = {h.device.slots.slots[mac(b)].info_idx for b in (1, 2)}
        self.assertEqual(indices, {7, 8})

    def test_ct003_carries_28_fields_and_int32(self) -> None:
        h = Harness(Ct003Options(mode="relay"))
        h.publish(40000.0)
        reply, _ = h.device.answer(codec.encode_request(codec.CtRequest("HMG-50", mac(1), "HME-3", "", "A", 0)),
                                   "127.0.0.1", 22222)
        assert reply is not None
        kind, answer = codec.parse_response(reply)
        self.assertEqual((kind, answer.ct_type, answer.phase_power[0]), ("ct003", "HME-3", 40000))


class ControlModeTests(SynchronousTestCase):
    def test_individual_values_and_info_idx_once_per_decision(self) -> None:
        h = Harness(Ct002Options())
        self.assertEqual((h.ask(1, "A", 0), h.ask(2, "B", 0)), ("stale", "stale"))  # known, not answered
        h.publish(600.0, 0.0, 0.0)
        first = h.ask(1, "A", 0)
        second = h.ask(2, "B", 0)
        assert isinstance(first, codec.CtResponse) and isinstance(second, codec.CtResponse)
        # 305 W each, in a bucket of 2 (the firmware's int(g/nb) gives 305 back, its spike filter is off)
        self.assertEqual((first.phase_power, first.total_power, first.chrg_nb), ((610, 0, 0), 610, (2, 2, 2, 2)))
        self.assertEqual(second.phase_power, (0, 610, 0))
        self.assertEqual((first.info_idx, second.info_idx), (1, 1))
        self.assertEqual(second.dchrg_power, (0, 300, 300, 0, 0))  # instructed, not reported
        again = h.ask(1, "A", 0)
        assert isinstance(again, codec.CtResponse)
        self.assertEqual((again.phase_power, again.info_idx), ((0, 0, 0), 1))  # deduped by the battery

    def test_bucket_count_one_serves_the_value_itself(self) -> None:
        h = Harness(Ct002Options(bucket_count=1))
        h.ask(1, "A", 0)
        h.publish(600.0, 0.0, 0.0)
        answer = h.ask(1, "A", 0)
        assert isinstance(answer, codec.CtResponse)
        self.assertEqual((answer.phase_power, answer.total_power, answer.chrg_nb), ((605, 0, 0), 605, (1, 1, 1, 1)))

    def test_bucket_count_is_validated(self) -> None:
        self.assertEqual([name for name, _ in Ct002Options(bucket_count=0).validate()], ["bucket_count"])
        self.assertEqual(Ct002Options().validate(), [])

    def test_unassigned_phase_sees_the_real_values(self) -> None:
        h = Harness(Ct002Options())
        h.publish(600.0, 20.0, -30.0)
        answer = h.ask(1, "", 0)
        assert isinstance(answer, codec.CtResponse)
        self.assertEqual((answer.phase_power, answer.info_idx), ((600, 20, -30), 0))


class StaleTests(SynchronousTestCase):
    def go_stale(self, h: Harness) -> None:
        h.publish(600.0)
        h.clock.advance(11.0)

    def test_error_answers_nobody(self) -> None:
        h = Harness(Ct002Options())
        self.go_stale(h)
        self.assertEqual(h.ask(1), "stale")

    def test_hold_is_a_zero_adjustment(self) -> None:
        for mode in ("control", "relay"):
            h = Harness(Ct002Options(on_stale="hold", mode=mode))
            self.go_stale(h)
            answer = h.ask(1, "A", 250)
            assert isinstance(answer, codec.CtResponse)
            self.assertEqual((answer.phase_power, answer.total_power), ((0, 0, 0), 0))

    def test_fallback_aims_the_total_output(self) -> None:
        h = Harness(Ct002Options(on_stale=FallbackPolicy(100.0)))
        self.go_stale(h)
        answer = h.ask(1, "A", 400)  # putting out 400 W; the fallback wants 100 W in total
        assert isinstance(answer, codec.CtResponse)
        self.assertEqual((answer.phase_power[0], answer.chrg_nb[3]), (-600, 2))  # -300 W in a bucket of 2

    def test_relay_fallback_keeps_the_round_robin_going(self) -> None:
        h = Harness(Ct002Options(mode="relay", on_stale=FallbackPolicy(0.0)))
        self.go_stale(h)
        answered, totals = [], []
        for _ in range(8):
            for battery in (1, 2):
                answer = h.ask(battery, "A", 150)
                if isinstance(answer, codec.CtResponse):
                    answered.append(battery)
                    totals.append(answer.total_power)
            h.clock.advance(0.5)
        self.assertEqual(answered, [1, 2, 1, 2])
        self.assertEqual(totals[-1], -300)  # aim 0 W in total: both put out 150 W

    def test_nan_is_never_served(self) -> None:
        h = Harness(Ct002Options(on_stale="hold"))
        h.publish(float("nan"))
        answer = h.ask(1, "A", 0)
        assert isinstance(answer, codec.CtResponse)
        self.assertEqual(answer.phase_power, (0, 0, 0))
        self.assertEqual(h.device.controller.view.decisions if h.device.controller else -1, 0)
