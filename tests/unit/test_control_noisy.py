"""The controller on a noisy house (±150 W per phase), on a simulated clock.

On such a house the mean of four readings is good to ±150 W: judged like a
quiet one, every fourth reading was "an error" and the batteries were moved
some 85 times in ten minutes while the load stood still. Here the noise is
learnt from the quiet readings and a small error must stand out of it.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.control import Controller, ControlOptions
from tests.unit.test_control_trim import Plant


class NoisyPlant(Plant):
    """Two discharging Venus batteries (FAST polls every 0.5 s, SLOW every 3 s) under ±150 W per phase."""

    def __init__(self, load: float, power: float, seed: int = 1) -> None:
        clock = Clock()
        clock.advance(1000)
        super().__init__(clock, Controller(clock, ControlOptions()), load, power)
        self.rng = random.Random(seed)

    def noise(self) -> float:
        return sum(self.rng.uniform(-150.0, 150.0) for _ in range(3))


class NoisyHouseTests(SynchronousTestCase):
    def test_on_target_the_batteries_are_left_alone(self) -> None:
        """Ten minutes of a still load under the noise: (almost) nobody moves (the old rules: ~70 moves)."""
        for seed in range(6):
            plant = NoisyPlant(load=800.0, power=400.0, seed=seed)
            plant.run(180.0)  # it learns the noise; a few moves on its first readings, and their trims
            before = plant.moves()
            plant.run(600.0)
            self.assertLessEqual(plant.moves() - before, 4, (seed, plant.served))  # two decisions

    def test_a_step_is_closed_short_and_the_leftover_keeps_its_side(self) -> None:
        """A 1 kW step: closed at once, one noise unit short; the leftover is trimmed, never crossed back and forth."""
        for seed in range(6):
            plant = NoisyPlant(load=800.0, power=400.0, seed=seed)
            plant.run(120.0)
            before = plant.moves()
            plant.load = 1800.0
            plant.run(180.0)
            moves = plant.moves() - before
            self.assertGreaterEqual(moves, 2, (seed, plant.served))  # the step, on both batteries
            self.assertLessEqual(moves, 6, (seed, plant.served))  # and a few trims at most
            after = plant.steered[-150:]  # what control left, the noise taken out
            self.assertLess(abs(sum(after) / len(after)), 80.0, (seed, moves))
            sides = [round(s / abs(s)) for s in plant.steered[-178:] if abs(s) > 20.0]
            crossings = sum(1 for a, b in zip(sides, sides[1:], strict=False) if a != b)
            self.assertLessEqual(crossings, 2, (seed, moves))  # not back and forth

    def test_a_drift_that_stands_out_of_the_noise_is_followed(self) -> None:
        """200 W more load, not a step (under 3.5 σ): judged on up to 32 readings, then closed."""
        plant = NoisyPlant(load=800.0, power=400.0, seed=4)
        plant.run(120.0)
        before = plant.moves()
        plant.load = 1000.0
        plant.run(120.0)
        self.assertGreaterEqual(plant.moves() - before, 1)
        after = plant.steered[-40:]
        self.assertLess(abs(sum(after) / len(after)), 80.0)

    def test_a_quiet_house_is_judged_as_before(self) -> None:
        """±10 W: the mean of four readings decides, no 32-reading wait (a 60 W error is closed within 6 s)."""
        clock = Clock()
        clock.advance(1000)
        ctl = Controller(clock, ControlOptions(import_bias=0.0))
        ctl.report("A1", 300.0, "A", "VNSE3-0")
        for k in range(30):
            clock.advance(1.0)
            ctl.report("A1", 300.0, "A", "VNSE3-0")
            ctl.reading((8.0, -8.0)[k % 2])
            self.assertEqual(ctl.serve("A1"), (0.0, False))
        served = []
        for k in range(6):
            clock.advance(1.0)
            ctl.report("A1", 300.0, "A", "VNSE3-0")
            ctl.reading(60.0 + (8.0, -8.0)[k % 2])
            served.append(ctl.serve("A1"))
        self.assertIn((60.0, True), served)
