"""The controller after a step, on a simulated clock: trims, slow pollers, rebalancing without import."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.control import Controller, ControlOptions

NOISE = (4.0, -4.0, 3.0, -3.0)  # the household's own noise, mean 0


def controller(**options: object) -> tuple[Clock, Controller]:
    clock = Clock()
    clock.advance(1000)
    return clock, Controller(clock, ControlOptions(**options))  # type: ignore[arg-type]


def venus(power: float, value: float) -> float:
    """What the Marstek integer law does with an adjustment while discharging (specs §2.2)."""
    if value >= 11:
        return power + value - 5  # an importing step: 5 W less
    if value < 0:
        return power + value
    return power  # 0 <= g < 11: held


def venus_charging(power: float, value: float) -> float:
    """The same law while charging: anything inside the 10 W rest deadband is held (specs §2.2)."""
    if abs(value) < 10:
        return power
    if -11 < value < 0:
        return power + value - 5
    return power + value


class Plant:
    """Two discharging Venus batteries on one meter: FAST polls every 0.5 s, SLOW every 3 s."""

    law = staticmethod(venus)

    def __init__(self, clock: Clock, ctl: Controller, load: float, power: float) -> None:
        self.clock, self.ctl, self.load = clock, ctl, load
        self.power = {"FAST": power, "SLOW": power}
        self.served: dict[str, list[float]] = {"FAST": [], "SLOW": []}
        self.ticks = 0
        self.grid: list[float] = []  # what the meter showed
        self.steered: list[float] = []  # the same without the household's noise

    def noise(self) -> float:
        """The household's own noise in this reading."""
        return NOISE[(self.ticks // 2) % len(NOISE)]

    def moves(self) -> int:
        return sum(len(values) for values in self.served.values())

    def run(self, seconds: float, first_noise: float | None = None) -> None:
        for _ in range(int(seconds / 0.5)):
            self.clock.advance(0.5)
            self.ticks += 1
            for key in ("FAST", "SLOW") if self.ticks % 6 == 0 else ("FAST",):
                self.ctl.report(key, self.power[key], "A", "VNSE3-0")
                value, new = self.ctl.serve(key)
                if new:
                    self.served[key].append(value)
                    self.power[key] = self.law(self.power[key], value)
            if self.ticks % 2 == 0:  # the meter, once a second
                noise = self.noise()
                if first_noise is not None:
                    noise, first_noise = first_noise, None
                steered = self.load - sum(self.power.values())
                grid = steered + noise
                self.steered.append(steered)
                self.grid.append(grid)
                self.ctl.reading(grid)


class TrimTests(SynchronousTestCase):
    def test_the_leftover_of_a_step_is_trimmed_by_the_fastest_battery(self) -> None:
        """The step is closed on one reading, 12 W of noise off; the quiet readings show it, FAST trims it."""
        clock, ctl = controller()
        plant = Plant(clock, ctl, load=800.0, power=400.0)
        plant.run(30.0)  # quiet: the controller learns the noise (about 7 W per reading)
        self.assertEqual(plant.served, {"FAST": [], "SLOW": []})
        plant.load = 1800.0  # a 1 kW step; its first reading has +12 W of noise
        plant.run(0.5)
        plant.run(0.5, first_noise=12.0)
        plant.run(10.0)
        self.assertEqual(len(plant.served["SLOW"]), 1)  # its half of the step, nothing more
        step = plant.served["FAST"][0]
        self.assertApproximates(step, 506 + 5, 1)  # half of 1012 W, + the import bias
        trims = plant.served["FAST"][1:]
        self.assertEqual(len(trims), 1)
        self.assertTrue(-12.0 <= trims[0] <= -6.0, trims)  # it put out 12 W too much
        plant.run(20.0)
        self.assertEqual(plant.served["FAST"][1:], trims)  # inside its noise now: no more moves
        self.assertLess(abs(sum(plant.grid[-10:]) / 10), 5.0)

    def test_no_trims_with_trim_min_0(self) -> None:
        clock, ctl = controller(trim_min=0.0)
        plant = Plant(clock, ctl, load=800.0, power=400.0)
        plant.run(30.0)
        plant.load = 1800.0
        plant.run(0.5)
        plant.run(0.5, first_noise=12.0)
        plant.run(30.0)
        self.assertEqual(len(plant.served["FAST"]), 1)  # the step only: 12 W is inside the deadband

    def test_a_leftover_one_charging_battery_would_miss_is_closed_by_two(self) -> None:
        """Charging, a Venus holds a move inside its 10 W deadband: alone it would close 7 W as 11 W.

        The step's reading has 9 W of noise, so the batteries charge 9 W too
        little; once the quiet readings show it, one battery charges 11 W less
        and the other that much more and the leftover besides.
        """
        clock, ctl = controller()
        plant = Plant(clock, ctl, load=-800.0, power=-400.0)
        plant.law = staticmethod(venus_charging)
        plant.run(30.0)
        plant.load = -1800.0  # a cloud passes: 1 kW more to store; its first reading has +9 W of noise
        plant.run(0.5)
        plant.run(0.5, first_noise=9.0)
        plant.run(15.0)
        trims = {key: served[1:] for key, served in plant.served.items()}
        self.assertEqual(sorted(len(t) for t in trims.values()), [1, 1], trims)  # one move each, together
        (a,), (b,) = sorted(trims.values())
        self.assertLess(a, -11.0)  # one charges more by more than its deadband...
        self.assertEqual(b, 11.0)  # ...the other 11 W less, its least move
        self.assertTrue(-10.0 <= a + b <= -4.0, (a, b))  # together about the 9 W leftover, not 11 W
        total = sum(plant.power.values())
        self.assertLess(abs(plant.load - total), 3.0)
        plant.run(20.0)
        self.assertEqual({key: served[1:] for key, served in plant.served.items()}, trims)  # nothing more

    def test_a_pair_is_not_used_when_one_battery_carries_the_trim_out(self) -> None:
        clock, ctl = controller()
        ctl.report("A", -500.0, "A", "VNSE3-0")
        ctl.report("B", -500.0, "A", "VNSE3-0")
        self.assertIsNone(ctl._pair([], -7.0, clock.seconds()))
        moves = ctl._pair(list(ctl.batteries.values()), -7.0, clock.seconds())
        assert moves is not None
        self.assertEqual(sorted(m for _, m in moves), [-18.0, 11.0])
        self.assertTrue(ctl._trim(list(ctl.batteries.values()), -12.0, clock.seconds()))
        self.assertEqual(sorted(b.target for b in ctl.batteries.values()), [-512.0, -500.0])  # one battery

    def test_the_move_each_firmware_carries_out(self) -> None:
        clock, ctl = controller()
        ctl.report("DIS", 300.0, "A", "VNSE3-0")
        ctl.report("CHG", -500.0, "A", "VNSE3-0")
        ctl.report("HMG", -500.0, "A", "HMG-50")
        ctl.report("B25", 300.0, "A", "HMJ-2")
        ctl.report("IDLE", 0.0, "A", "VNSE3-0")
        takes = ctl._takes
        battery = ctl.batteries
        self.assertEqual(takes(battery["DIS"], -3.0), -3.0)  # discharging: any decrease
        self.assertEqual(takes(battery["DIS"], 8.0), 8.0)  # an increase of 6 W or more (+5 W bias)
        self.assertIsNone(takes(battery["DIS"], 5.0))
        self.assertEqual(takes(battery["CHG"], 7.0), 11.0)  # charging: past the 10 W rest deadband
        self.assertEqual(takes(battery["CHG"], -14.0), -14.0)
        self.assertIsNone(takes(battery["CHG"], -4.0))
        self.assertEqual(takes(battery["HMG"], 12.0), 21.0)  # the HMG-50's is 20 W
        self.assertIsNone(takes(battery["B25"], -10.0))  # another law
        self.assertIsNone(takes(battery["IDLE"], -10.0))  # at rest: its deadband holds


class SlowPollerTests(SynchronousTestCase):
    def test_a_reading_before_the_battery_reports_its_move_does_not_count(self) -> None:
        """A battery polling every 6 s still reports its old power: it is not taken as steady at it."""
        clock, ctl = controller(import_bias=0.0)
        ctl.report("V2", 800.0)
        ctl.reading(-600.0)
        self.assertEqual(ctl.serve("V2"), (-600.0, True))
        for _ in range(5):  # it moved at once; the meter shows it, its report does not yet
            clock.advance(1.0)
            ctl.reading(3.0)
        clock.advance(1.0)
        ctl.report("V2", 200.0)
        self.assertEqual(ctl.serve("V2"), (0.0, False))  # not told to go back to the old 800 W
        self.assertEqual(ctl.batteries["V2"].target, 200.0)


class RebalanceTests(SynchronousTestCase):
    def test_a_rebalance_raises_first_and_lowers_once_the_grid_shows_it(self) -> None:
        """A battery that cannot rise (empty) must not leave the other's drop as import."""
        clock, ctl = controller(import_bias=0.0)
        ctl.report("A1", 600.0)
        ctl.report("B1", 0.0)
        for _ in range(4):  # on target, 600 W away from equal shares
            clock.advance(1.0)
            ctl.reading(2.0)
        self.assertEqual(ctl.serve("A1"), (0.0, False))
        self.assertEqual(ctl.serve("B1"), (300.0, True))
        clock.advance(1.0)
        ctl.report("A1", 600.0)
        ctl.report("B1", 300.0)  # it rose: the grid shows the surplus
        clock.advance(2.0)
        ctl.reading(-298.0)
        self.assertEqual(ctl.serve("A1"), (-298.0, True))  # its half, and B1's 1 W folded onto it
        self.assertEqual(ctl.serve("B1"), (0.0, False))
