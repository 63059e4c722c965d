"""The active controller on a simulated clock: weights, saturation hand-off, pacing, stale and NaN."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.control import Controller, ControlOptions, Quality
from meteremu.control.allocate import Slot, allocate, concentrate


def controller(**options: object) -> tuple[Clock, Controller]:
    clock = Clock()
    clock.advance(1000)
    return clock, Controller(clock, ControlOptions(**options))  # type: ignore[arg-type]


class AllocateTests(SynchronousTestCase):
    def test_weights_and_limits_hand_the_rest_over(self) -> None:
        self.assertEqual(allocate(1000, [Slot(3, -2500, 2500), Slot(1, -2500, 2500)]), [750, 250])
        self.assertEqual(allocate(1000, [Slot(1, -2500, 200), Slot(1, -2500, 2500)]), [200, 800])
        self.assertEqual(allocate(-900, [Slot(1, 0, 800), Slot(1, -2500, 800)]), [0, -900])
        self.assertEqual(allocate(5000, [Slot(1, -100, 800), Slot(1, -100, 800)]), [800, 800])
        self.assertEqual(allocate(100, [Slot(0, -100, 800), Slot(1, -100, 800)]), [0, 100])

    def test_small_moves_are_folded_onto_one_battery(self) -> None:
        room = [(-1000.0, 1000.0)] * 3
        self.assertEqual(concentrate([10, 10, 10], 15, room), [30, 0, 0])
        self.assertEqual(concentrate([40, 10, -3], 15, room), [47, 0, 0])
        self.assertEqual(concentrate([4, 4, 4], 15, room), [0, 0, 0])  # inside every deadband: nobody


class ReportingTests(SynchronousTestCase):
    """The CT path: batteries report their own power."""

    def poll(self, ctl: Controller, key: str, power: float) -> tuple[float, bool]:
        ctl.report(key, power, "A")
        return ctl.serve(key)

    def test_weights_share_the_wanted_output(self) -> None:
        clock, ctl = controller(weights={"A1": 3.0, "B1": 1.0}, import_bias=0.0)
        ctl.report("A1", 0, "A")
        ctl.report("B1", 0, "B")
        ctl.reading(1000.0)
        self.assertEqual(ctl.serve("A1"), (750.0, True))
        self.assertEqual(ctl.serve("B1"), (250.0, True))
        # once: the next polls get zero while they move
        self.assertEqual(ctl.serve("A1"), (0.0, False))
        self.assertEqual(ctl.batteries["A1"].target, 750.0)

    def test_no_hunting_while_outputs_move_and_the_meter_lags(self) -> None:
        clock, ctl = controller(import_bias=0.0)
        ctl.report("A1", 0)
        ctl.reading(800.0)
        self.assertEqual(ctl.serve("A1"), (800.0, True))
        for step in range(6):  # the meter still shows the old error; the battery ramps
            clock.advance(0.5)
            ctl.reading(800.0 - 100 * step)
            self.assertEqual(self.poll(ctl, "A1", 150.0 * step), (0.0, False))
        clock.advance(3.0)
        ctl.reading(0.0)
        self.assertEqual(self.poll(ctl, "A1", 800.0), (0.0, False))
        self.assertEqual(ctl.quality(), Quality.STABLE)

    def test_a_remaining_error_is_closed_after_the_battery_settles(self) -> None:
        clock, ctl = controller(import_bias=0.0)
        ctl.report("A1", 0)
        ctl.reading(800.0)
        ctl.serve("A1")
        clock.advance(1.0)
        self.poll(ctl, "A1", 700.0)  # it moved, 100 W short (slew, losses)
        clock.advance(4.0)
        ctl.reading(100.0)  # steady for long enough: the reading counts
        self.assertEqual(self.poll(ctl, "A1", 700.0), (100.0, True))
        self.assertEqual(self.poll(ctl, "A1", 700.0), (0.0, False))  # once

    def test_saturation_hands_the_share_over_within_seconds(self) -> None:
        """A full battery does not charge; after two misses its share goes to the other."""
        clock, ctl = controller(import_bias=0.0)
        ctl.report("FULL", 0)
        ctl.report("ROOM", 0)
        ctl.reading(-1000.0)
        self.assertEqual(ctl.serve("FULL"), (-500.0, True))
        self.assertEqual(ctl.serve("ROOM"), (-500.0, True))
        started = clock.seconds()
        while ctl.batteries["FULL"].full_until < clock.seconds() and clock.seconds() - started < 30:
            clock.advance(0.5)
            self.poll(ctl, "FULL", 0.0)
            ctl.report("ROOM", -500.0 if clock.seconds() - started > 2 else 0.0)
            ctl.serve("ROOM")
            ctl.reading(-500.0)
            self.poll(ctl, "FULL", 0.0)
        self.assertLess(clock.seconds() - started, 15.0)
        self.assertEqual(ctl.overview()["batteries"][0]["state"], "full")
        # the next decision gives the whole charge to the battery with room
        for _ in range(10):
            clock.advance(0.5)
            ctl.report("ROOM", -500.0)
            ctl.reading(-500.0)
            value, new = ctl.serve("ROOM")
            if new:
                break
        self.assertEqual((value, new), (-500.0, True))
        self.assertEqual(self.poll(ctl, "FULL", 0.0), (0.0, False))
        self.assertEqual(ctl.batteries["ROOM"].target, -1000.0)

    def test_limited_when_every_battery_is_full(self) -> None:
        clock, ctl = controller(saturation_hold=60.0)
        ctl.report("A1", 0)
        ctl.batteries["A1"].full_until = clock.seconds() + 60
        ctl.reading(-700.0)
        self.assertEqual(ctl.quality(), Quality.LIMITED)

    def test_stale_and_nan_readings_change_nothing(self) -> None:
        clock, ctl = controller()
        ctl.report("A1", 0)
        for bad in (None, float("nan"), float("inf")):
            ctl.reading(bad)
            self.assertEqual(ctl.serve("A1"), (0.0, False))
        self.assertEqual(ctl.view.ignored_readings, 3)
        self.assertEqual(ctl.view.decisions, 0)
        self.assertEqual(ctl.quality(), Quality.IDLE)
        ctl.reading(500.0)
        self.assertTrue(ctl.serve("A1")[1])
        ctl.reading(float("nan"))  # a NaN after a decision: the next poll gets nothing
        clock.advance(10)
        self.assertEqual(self.poll(ctl, "A1", 0.0), (0.0, False))

    def test_deadband_and_min_step(self) -> None:
        clock, ctl = controller(deadband=20.0, min_step=15.0, import_bias=0.0)
        for key in ("A1", "B1", "C1"):
            ctl.report(key, 100.0)
        ctl.reading(12.0)
        self.assertEqual([ctl.serve(k)[0] for k in ("A1", "B1", "C1")], [0.0, 0.0, 0.0])
        self.assertEqual(ctl.quality(), Quality.STABLE)
        ctl.reading(45.0)
        ctl.reading(45.0)
        ctl.reading(45.0)  # judged on the mean of four quiet readings: (12 + 45 + 45 + 45) / 4 = 37 W
        # 12 W each would be ignored by every firmware: one battery takes it all
        self.assertEqual(sorted(round(ctl.serve(k)[0]) for k in ("A1", "B1", "C1")), [0, 0, 37])

    def test_noise_is_averaged_a_step_is_not(self) -> None:
        clock, ctl = controller(import_bias=0.0)
        ctl.report("A1", 0)
        for noise in (30.0, -25.0, 10.0):  # mean 5 W: inside the deadband
            ctl.reading(noise)
            self.assertEqual(ctl.serve("A1"), (0.0, False))
        ctl.reading(2000.0)  # a kettle: at once
        self.assertEqual(ctl.serve("A1"), (2000.0, True))

    def test_on_a_noisy_house_a_large_reading_is_a_step_only_beyond_three_times_the_noise(self) -> None:
        """±150 W of household noise: 300 W readings come and go; a kettle still goes at once."""
        clock, ctl = controller(import_bias=0.0)
        ctl.report("A1", 0)
        for k in range(20):  # a noisy house, nobody moving: jumps of about 150-300 W, mean 0
            clock.advance(1.0)
            ctl.reading((150.0, -150.0, 120.0, -120.0)[k % 4])
            self.assertEqual(ctl.serve("A1"), (0.0, False))
        clock.advance(1.0)
        ctl.reading(300.0)  # beyond fast_error (250 W), inside 3× the noise: not a step
        self.assertEqual(ctl.serve("A1"), (0.0, False))
        clock.advance(1.0)
        ctl.reading(2000.0)  # a kettle stands out of the noise: at once, one noise unit short
        value, new = ctl.serve("A1")  # σ = mean jump (about 277 W) / 1.128
        self.assertTrue(new)
        self.assertTrue(1740.0 < value < 1770.0, value)

    def test_a_quiet_house_keeps_fast_error(self) -> None:
        clock, ctl = controller(import_bias=0.0)
        ctl.report("A1", 0)
        for k in range(20):
            clock.advance(1.0)
            ctl.reading((8.0, -8.0)[k % 2])
        clock.advance(1.0)
        ctl.reading(300.0)
        self.assertEqual(ctl.serve("A1"), (300.0, True))

    def test_an_adjustment_not_taken_is_sent_once_more_after_pace(self) -> None:
        """The Marstek spike filter skips the first sample of a jump: the second is forced through."""
        clock, ctl = controller(import_bias=0.0, pace=3.2)
        ctl.report("A1", 0)
        ctl.reading(600.0)
        self.assertEqual(ctl.serve("A1"), (600.0, True))
        clock.advance(3.0)
        self.assertEqual(self.poll(ctl, "A1", 0.0), (0.0, False))  # within pace: not yet
        clock.advance(0.5)
        self.assertEqual(self.poll(ctl, "A1", 0.0), (600.0, True))  # once more
        clock.advance(3.5)
        self.assertEqual(self.poll(ctl, "A1", 0.0), (0.0, False))  # not a third time before judging

    def test_a_load_that_comes_and_goes_is_not_chased(self) -> None:
        """A washer's motor pausing 3 s: 120 W errors that the quiet readings do not all show."""
        clock, ctl = controller(import_bias=0.0)
        ctl.report("A1", 300)
        for error in (5.0, -120.0, -120.0, -120.0, 8.0, -3.0, -120.0, -120.0, -120.0, 2.0):
            clock.advance(1.0)
            ctl.report("A1", 300)
            ctl.reading(error)
            self.assertEqual(ctl.serve("A1"), (0.0, False), error)
        for _ in range(4):  # a load that stays is followed once four readings show it
            clock.advance(1.0)
            ctl.report("A1", 300)
            ctl.reading(-120.0)
        self.assertEqual(ctl.serve("A1"), (-120.0, True))

    def test_one_pause_among_readings_near_zero_is_not_chased(self) -> None:
        """Readings of −1 W and one of a washer's pauses (−120 W): a mean of −31 W is not an error."""
        clock, ctl = controller(import_bias=0.0)
        ctl.report("A1", 300)
        for error in (-1.0, -2.0, -1.0, -120.0, -1.0, -1.0, -2.0, -120.0):
            clock.advance(1.0)
            ctl.report("A1", 300)
            ctl.reading(error)
            self.assertEqual(ctl.serve("A1"), (0.0, False), error)
        for _ in range(4):  # −30 W that stays is followed (on the mean of the last four readings)
            clock.advance(1.0)
            ctl.report("A1", 300)
            ctl.reading(-30.0)
        value, new = ctl.serve("A1")
        self.assertTrue(new)
        self.assertTrue(-60.0 < value < -25.0, value)

    def test_import_bias_offsets_the_venus_step(self) -> None:
        clock, ctl = controller()
        ctl.report("A1", 0)
        ctl.reading(300.0)
        self.assertEqual(ctl.serve("A1"), (305.0, True))


class SilentTests(SynchronousTestCase):
    """The Shelly path: no reported power, a share of the current error on every poll."""

    def test_weighted_shares_and_deadband(self) -> None:
        clock, ctl = controller(weights={"10.0.0.1": 1.0, "10.0.0.2": 3.0})
        ctl.report("10.0.0.1", None)
        ctl.report("10.0.0.2", None)
        ctl.reading(400.0)
        self.assertEqual(ctl.serve("10.0.0.1")[0], 100.0)
        self.assertEqual(ctl.serve("10.0.0.2")[0], 300.0)
        ctl.reading(10.0)
        self.assertEqual(ctl.serve("10.0.0.2"), (0.0, False))

    def test_hand_off_gain_grows_while_the_error_does_not_shrink(self) -> None:
        clock, ctl = controller(response_time=5.0)
        ctl.report("10.0.0.1", None)
        ctl.report("10.0.0.2", None)
        shares = []
        for _ in range(30):
            ctl.reading(600.0)  # one battery is empty: the error stays
            ctl.report("10.0.0.1", None)
            ctl.report("10.0.0.2", None)
            shares.append(ctl.serve("10.0.0.2")[0])
            clock.advance(1.0)
        self.assertEqual(shares[0], 300.0)
        self.assertEqual(shares[-1], 600.0)  # the one that can still move is given all of it
