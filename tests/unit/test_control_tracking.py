"""A B2500 on CT002 control, on a simulated clock: it is fed what is left of its move on every poll.

The B2500's firmware recomputes ``out + 0.9·value`` from its measured output
on every answer and moves each of its two DC channels about 17 W towards it
(specs/batteries.md §2.6). A one-shot adjustment (right for the Venus
integer law) moves it one step only, and the controller used to take that
for an empty battery.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.control import Controller, ControlOptions


class B2500:
    """Two channels, each stepping 17 W towards half of ``out + 0.9·value`` unless within ±10 W."""

    def __init__(self, limit: float = 800.0) -> None:
        self.channels = [0.0, 0.0]
        self.limit = limit

    @property
    def power(self) -> float:
        return sum(self.channels)

    def answer(self, value: float) -> None:
        half = min(max(self.power + 0.9 * value, 0.0), self.limit) / 2
        for i, watts in enumerate(self.channels):
            if watts < half - 10:
                self.channels[i] = min(watts + 17.0, self.limit / 2)
            elif watts > half + 10:
                self.channels[i] = max(watts - 17.0, 0.0)


def run(load: float, seconds: float, limit: float = 800.0) -> tuple[Controller, B2500, list[float]]:
    clock = Clock()
    clock.advance(1000)
    ctl = Controller(clock, ControlOptions())
    battery, grid = B2500(limit), []
    for _ in range(int(seconds)):
        clock.advance(1.0)
        ctl.report("B", battery.power, "D", "HMJ-2")
        value, new = ctl.serve("B")
        if new:
            battery.answer(value)
        grid.append(load - battery.power)
        ctl.reading(grid[-1])
    return ctl, battery, grid


class TrackingTests(SynchronousTestCase):
    def test_a_b2500_is_led_all_the_way_to_the_load(self) -> None:
        ctl, battery, grid = run(load=500.0, seconds=90)
        self.assertLess(abs(grid[-1]), 30.0)  # within its channels' hold
        self.assertNotEqual(ctl.batteries["B"].state(0.0), "empty")
        self.assertGreater(battery.power, 470.0)

    def test_it_is_not_taken_for_empty_while_it_ramps(self) -> None:
        """500 W at 34 W a second takes 15 polls: longer than one judgement of a one-shot move."""
        ctl, _, _ = run(load=500.0, seconds=20)
        state = ctl.batteries["B"]
        self.assertEqual(state.empty_until, float("-inf"))

    def test_at_its_limit_it_is_taken_as_unable_to_give_more(self) -> None:
        ctl, battery, grid = run(load=1500.0, seconds=120, limit=600.0)
        self.assertEqual(battery.power, 600.0)
        self.assertGreater(grid[-1], 800.0)
        clock_now = ctl.clock.seconds()
        self.assertEqual(ctl.batteries["B"].state(clock_now), "empty")

    def test_a_venus_still_gets_one_shot_adjustments(self) -> None:
        clock = Clock()
        clock.advance(1000)
        ctl = Controller(clock, ControlOptions())
        values = []
        for _ in range(6):
            clock.advance(0.5)
            ctl.report("V", 0.0, "D", "VNSE3-0")
            values.append(ctl.serve("V"))
            ctl.reading(400.0)
        news = [value for value, new in values if new]
        self.assertLessEqual(len(news), 2)  # sent once, at most once more past the spike filter
