"""The battery lab's pure cores: firmware laws (golden vectors), plants, metrics, statistics.

Golden vectors are derived by hand from the laws as specs/batteries.md §2.2
states them (the derivation is in the comments), not recorded from our own
code: a change to a law that moves a number is a change of the law.
"""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meteremu.lab import catalogue, firmware, metrics, stats
from meteremu.lab.battery import Battery, BatterySpec
from meteremu.lab.compare import compare, format_table
from meteremu.lab.household import Appliance, HouseholdSpec
from meteremu.lab.household import build as build_household
from meteremu.lab.loop import Trace
from meteremu.lab.meterpath import DeviceSetup
from meteremu.lab.runner import run_many, run_one, setup_for
from meteremu.lab.scenario import MeterSpec, Scenario
from meteremu.lab.sim import Simulation

LO, HI = -2500.0, 800.0


class VenusIntegerLawTests(SynchronousTestCase):
    def test_integrator_golden_vector(self):
        law = firmware.VenusIntegerLaw()
        # (g, out) → setpoint; db 10, gain 1, park 11/11
        vector = [
            (300, 0, 295),     # importing, out>=0, g>=11: sp += g − 5
            (280, 295, 570),   # |Δg| 20: no spike; sp += 275
            (-400, 570, 170),  # exporting while discharging: out·g<0 → sp += g
            (8, 170, 170),     # small-import hold 0≤g<10
        ]
        for g, out, expected in vector:
            self.assertEqual(law.step(g, out, LO, HI), expected, (g, out))

    def test_spike_filter_one_shot(self):
        law = firmware.VenusIntegerLaw()
        self.assertEqual(law.step(300, 0, LO, HI), 295)
        self.assertEqual(law.step(300, 0, LO, HI), 590)  # still starting up: out unchanged
        self.assertEqual(law.step(1200, 5, LO, HI), 590)  # |Δg| 900 > 50, |Δout| 5 < 20: skipped
        self.assertEqual(law.step(1200, 10, LO, HI), 800)  # one-shot: forced through, clamped

    def test_deadband_charge_and_park(self):
        law = firmware.VenusIntegerLaw()
        self.assertEqual(law.step(5, 0, LO, HI), 0)  # |g|<db and out<1: hold
        self.assertEqual(law.step(-15, 0, LO, HI), -15)  # idle, exporting: sp += gain·g
        self.assertEqual(law.step(-12, -15, LO, HI), -27)  # charging more
        self.assertEqual(law.step(-5, -27, LO, HI), -27)  # |g|<db and out<1: the deadband holds
        self.assertEqual(law.step(-10, -27, LO, HI), -42)  # out<0, −11<g<0: sp += g − 5
        self.assertEqual(law.step(30, -42, LO, HI), -12)  # charging while importing: sp += g
        parked = firmware.VenusIntegerLaw(sp=20)
        self.assertEqual(parked.step(-12, 20, LO, HI), 0)  # 20−12 = 8: |sp|<11 and g<11 → park

    def test_shared_bucket_splits_and_has_no_spike_filter(self):
        law = firmware.VenusIntegerLaw()
        self.assertEqual(law.step(301, 0, LO, HI, nb=2), 145)  # int(301/2)=150, 150−5
        self.assertEqual(law.step(2001, 145, LO, HI, nb=2), 800)  # a jump, but nb>1: no spike skip

    def test_hmg50_integer_gate(self):
        law = firmware.hmg50_integer()
        self.assertEqual(law.step(-19, 0, LO, HI), 0)  # |g|<20 and out<1: hold (Venus would charge)
        self.assertEqual(law.step(-25, 0, LO, HI), -25)
        self.assertEqual(law.step(-20, -25, LO, HI), -45)  # charging, exporting: sp += gain·g
        self.assertEqual(firmware.VenusIntegerLaw(deadband=20, park_sp=21, park_g=16, sp=30).step(
            -12, 30, LO, HI), 0)  # 18: |sp|<21 and g<16 → park


class Hmg50FloatLawTests(SynchronousTestCase):
    def test_ramp_golden_vector(self):
        law = firmware.Hmg50FloatLaw()
        vector = [
            (300, 0, 50.10),     # ramp 0→1, step min(310, 50.10, 300)
            (260, 50, 100.31),   # |g| fell: ramp 2, +50.21
            (210, 100, 200.32),  # ramp 3, +100.01
            (110, 200, 310.32),  # ramp 4, step limited by |g| = 110
            (400, 310, 410.33),  # |g| rose: brake to ramp 3, +100.01
        ]
        for g, out, expected in vector:
            self.assertAlmostEqual(law.step(g, out, -2500.0, 2500.0), expected, places=6, msg=(g, out))

    def test_spike_has_no_one_shot_and_window_pullback(self):
        law = firmware.Hmg50FloatLaw()
        law.step(100, 0, -2500.0, 2500.0)
        self.assertEqual(law.step(500, 0, -2500.0, 2500.0), law.sp)  # spike skipped
        before = law.sp
        self.assertEqual(law.step(1000, 0, -2500.0, 2500.0), before)  # and again: no one-shot
        high = firmware.Hmg50FloatLaw(sp=790.0, ramp=4)
        self.assertAlmostEqual(high.step(300, 790, -2500.0, 800.0), 700.0)  # past hi=800: back to hi−100


class B2500LawTests(SynchronousTestCase):
    def test_channels_move_about_17_w_per_cycle(self):
        law = firmware.B2500Law()
        # target 0.9·300 = 270 → 135 per channel; each command +100 → (100−5)·10/59 W
        self.assertAlmostEqual(law.step(300, 0, 0.0, 800.0), 2 * 95 * 10 / 59)
        self.assertAlmostEqual(law.step(268, 32.2034, 0.0, 800.0), 2 * 195 * 10 / 59)

    def test_needs_80_w_to_start_and_never_charges(self):
        self.assertEqual(firmware.B2500Law().step(50, 0, 0.0, 800.0), 0.0)  # 45 W < 80 W start
        self.assertEqual(firmware.B2500Law().step(-500, 0, 0.0, 800.0), 0.0)


class IntegratorLawTests(SynchronousTestCase):
    def test_gain_deadband_clamp(self):
        law = firmware.IntegratorLaw(gain=0.7, deadband=15.0)
        self.assertAlmostEqual(law.step(100, 0, -1000, 800), 70.0)
        self.assertAlmostEqual(law.step(10, 70, -1000, 800), 70.0)
        self.assertAlmostEqual(law.step(-200, 70, -1000, 800), -70.0)
        self.assertAlmostEqual(law.step(5000, -70, -1000, 800), 800.0)

    def test_unknown_law(self):
        self.assertRaises(ValueError, firmware.make_law, "zendure")


def battery(**kw: object) -> Battery:
    return Battery.build(BatterySpec(**{"model": "venus", **kw}), 0)  # type: ignore[arg-type]


class BatteryPlantTests(SynchronousTestCase):
    def run_for(self, b: Battery, seconds: float, start: float = 0.0) -> float:
        t = start
        while t < start + seconds - 1e-9:
            t += 0.1
            b.advance(t, 0.1)
        return t

    def test_slew_and_startup(self):
        b = battery(startup=2.0, gate=0.0)
        b.observe(0.0, 600.0)  # 600 − 5
        self.assertEqual(b.target, 595.0)
        t = self.run_for(b, 1.9)
        self.assertEqual(b.power, 0.0)  # still starting up
        self.run_for(b, 1.0, t)
        self.assertAlmostEqual(b.power, 400.0)  # from 2 s on: 400 W/s

    def test_limits_min_power_and_soc(self):
        b = battery(startup=0.0, gate=0.0, min_power=20.0)
        b.observe(0.0, 14.0)  # 14 − 5 = 9 W, under min_power
        self.assertEqual(b.target, 0.0)
        full = battery(soc=1.0)
        self.assertEqual(full.envelope(), (0.0, 800.0))
        empty = battery(soc=0.05)
        self.assertEqual(empty.envelope()[1], 0.0)
        b2500 = Battery.build(BatterySpec("b2500"), 0)
        self.assertEqual(b2500.envelope()[0], 0.0)  # no AC charging

    def test_command_delay_and_gate(self):
        b = Battery.build(BatterySpec("growatt", startup=0.0), 0)
        b.observe(0.0, 500.0)
        self.assertEqual(b.target, 0.0)
        b.advance(2.0, 0.1)
        self.assertEqual(b.target, 250.0)  # 0.5·500 after the 2 s delay
        gated = battery(startup=0.0)  # Venus: gate 3 s
        gated.observe(0.0, 300.0)
        gated.observe(1.0, 300.0)
        self.assertEqual(gated.setpoint, 295.0)  # the second answer fell inside the gate

    def test_safe_mode_without_answers(self):
        b = battery(startup=0.0, gate=0.0, no_reply_hold=10.0)
        b.observe(0.0, 300.0)
        b.observe(5.0, None)
        self.assertEqual(b.target, 295.0)
        b.observe(10.5, None)
        self.assertEqual(b.target, 0.0)


SHORT = Scenario("short", "test", 600, HouseholdSpec(appliances=(Appliance("kettle", 0.2), Appliance("step", 0.6))),
                 (BatterySpec("venus", soc=0.5), BatterySpec("hoymiles", phase=1, soc=0.95)), MeterSpec())


class PlantBalanceTests(SynchronousTestCase):
    def test_energy_balance(self):
        loop = Simulation(SHORT, 3, DeviceSetup()).run()
        tally = loop.tally
        # grid = load − PV − Σ battery, integrated
        self.assertAlmostEqual(tally.import_wh - tally.export_wh,
                               tally.load_wh - tally.pv_wh - tally.battery_wh, places=6)
        for b in loop.batteries:
            eta = math.sqrt(b.spec.efficiency)
            stored = b.charged_ac_wh * eta - b.discharged_ac_wh / eta - b.standby_wh - b.clipped_wh
            self.assertAlmostEqual(b.soc_wh - b.spec.soc * b.capacity, stored, places=6)
        self.assertGreater(sum(b.discharged_ac_wh for b in loop.batteries), 10.0)
        self.assertLessEqual(tally.avoidable_import_wh, tally.import_wh + 1e-9)

    def test_household_is_deterministic_per_seed_and_streams_are_separate(self):
        spec = HouseholdSpec(noise=50.0, appliances=(Appliance("washer", 0.1, duration=300.0),))
        a, b = build_household(spec, 600, 4), build_household(spec, 600, 4)
        self.assertEqual(a.load, b.load)
        quiet = build_household(HouseholdSpec(noise=0.0, appliances=spec.appliances), 600, 4)
        self.assertEqual(a.events, quiet.events)  # the noise never moves the timeline
        self.assertNotEqual(a.load, build_household(spec, 600, 5).load)

    def test_parallel_runs_give_the_same_results(self):
        one = run_many(["short_step"], [0, 1], "divide", jobs=1)
        two = run_many(["short_step"], [0, 1], "divide", jobs=2)
        self.assertEqual(json.dumps(one["results"], sort_keys=True), json.dumps(two["results"], sort_keys=True))

    def test_same_seed_same_json(self):
        first = run_one("venus_washer", 2, "divide", True)
        second = run_one("venus_washer", 2, "divide", True)
        first.pop("cpu_s"), second.pop("cpu_s")
        self.assertEqual(json.dumps(first, sort_keys=True), json.dumps(second, sort_keys=True))
        self.assertNotEqual(first["metrics"], run_one("venus_washer", 3, "divide", False)["metrics"])


class MetricTests(SynchronousTestCase):
    def test_band_crossings_use_hysteresis(self):
        self.assertEqual(metrics.band_crossings([0, 30, 10, -10, 30, -30, 25, -25]), 3)

    def test_step_response(self):
        t = [k * 0.5 for k in range(200)]
        grid = [500.0 if x < 5 else (-80.0 if x < 8 else 10.0) for x in t]
        settles, overshoots, unsettled = metrics.step_responses(t, grid, [0.0], 100.0)
        self.assertEqual(settles, [8.0])
        self.assertEqual(overshoots, [80.0])
        self.assertEqual(unsettled, 0)
        hunting = [300.0 if k % 8 < 4 else -300.0 for k in range(200)]
        settles, _, unsettled = metrics.step_responses(t, hunting, [0.0, 60.0], 100.0)
        self.assertEqual((settles, unsettled), ([60.0, 40.0], 2))  # censored at the window
        beyond = [1500.0] * 200  # a 2 kW kettle on an 800 W battery: saturated from 3 s on
        room = [100.0 if k < 6 else 0.0 for k in range(200)]
        settles, _, unsettled = metrics.step_responses(t, beyond, [0.0], 100.0, room, [0.0] * 200)
        self.assertEqual((settles, unsettled), ([3.0], 0))

    def test_the_settle_band_is_never_narrower_than_the_household_noise(self):
        """A perfect controller leaves the household's own noise: a band under it measures noise, not control."""
        quiet, noisy = (build_household(HouseholdSpec(noise=n), 600.0, 0).noise_floor for n in (10.0, 150.0))
        self.assertTrue(20.0 < quiet < 25.0, quiet)  # three phases of ±10 W: the 25 W band stands
        self.assertTrue(330.0 < noisy < 390.0, noisy)
        self.assertEqual((metrics.settle_band(quiet), metrics.settle_band(noisy)), (25.0, noisy))
        t = [k * 0.5 for k in range(200)]
        grid = [2000.0 if k < 4 else (200.0 if k % 3 else -200.0) for k in range(200)]  # settled, ±200 W noise
        self.assertEqual(metrics.step_responses(t, grid, [0.0], 100.0)[2], 1)  # 25 W: never settles
        self.assertEqual(metrics.step_responses(t, grid, [0.0], 100.0, band=noisy), ([2.0], [200.0], 0))

    def test_steered_metrics_leave_the_household_noise_out(self):
        """A perfect controller scores no hunting; one that chases the noise still shows it."""
        hh = build_household(HouseholdSpec(noise=150.0), 600.0, 0)
        n = len(hh.noise)
        trace = Trace(t=[k * 0.5 for k in range(n)])
        run = SimpleNamespace(household=hh, trace=trace)  # what metrics.steered reads of a loop
        trace.grid = [hh.noise_at(k) for k in range(n)]  # the noiseless load put out exactly
        self.assertGreater(metrics.band_crossings(trace.grid) / 600 * 3600, 2000)  # raw: "hunting"
        self.assertEqual(metrics.band_crossings(metrics.steered(run)), 0)
        trace.grid = [hh.noise_at(k) - hh.noise_at(k - 1) for k in range(1, n)] + [0.0]  # a battery chasing it
        self.assertGreater(metrics.band_crossings(metrics.steered(run)) / 600 * 3600, 1000)

    def test_steerable_energy_is_the_avoidable_energy_of_a_noiseless_house(self):
        quiet = dataclasses.replace(SHORT, household=dataclasses.replace(SHORT.household, noise=0.0))
        tally = Simulation(quiet, 3, DeviceSetup()).run().tally
        self.assertEqual((tally.steerable_import_wh, tally.steerable_export_wh),
                         (tally.avoidable_import_wh, tally.avoidable_export_wh))
        tally = Simulation(SHORT, 3, DeviceSetup()).run().tally
        self.assertNotEqual(tally.steerable_import_wh, tally.avoidable_import_wh)
        self.assertGreater(tally.steerable_import_wh, 0.0)

    def test_percentile_and_rms(self):
        self.assertEqual(metrics.percentile([1, 2, 3, 4, 5], 50), 3)
        self.assertAlmostEqual(metrics.rms([3.0, -4.0]), math.sqrt(12.5))

    def test_oracle_never_costs_more_than_no_battery(self):
        loop = Simulation(SHORT, 1, DeviceSetup()).run()
        scores = metrics.score(loop)
        self.assertLessEqual(scores["oracle_cost_ct"], scores["grid_cost_ct"] + scores["cost_regret_ct"] + 1e-9)
        no_battery = (loop.tally.load_wh - loop.tally.pv_wh) * metrics.IMPORT_CT / 1000.0
        self.assertLess(scores["oracle_cost_ct"], no_battery)
        self.assertGreaterEqual(scores["grid_rms_w"], scores["mean_abs_grid_w"])


class StatsTests(SynchronousTestCase):
    def test_bootstrap_interval_holds_the_mean(self):
        centre, low, high = stats.bootstrap([1.0, 2.0, 3.0, 4.0, 10.0])
        self.assertEqual(centre, 4.0)
        self.assertLess(low, centre)
        self.assertGreater(high, centre)
        self.assertEqual(stats.bootstrap([2.0, 2.0]), (2.0, 2.0, 2.0))
        self.assertEqual(stats.bootstrap([1.0, 5.0]), stats.bootstrap([1.0, 5.0]))

    def test_paired(self):
        centre, low, high = stats.paired([10.0, 20.0, 30.0], [11.0, 21.0, 31.5])
        self.assertAlmostEqual(centre, 7 / 6)
        self.assertGreater(low, 0.0)


class ProfileTests(SynchronousTestCase):
    def test_richardson_offline_deterministic_and_tidy(self):
        import random

        import numpy

        from meteremu.lab.profiles import richardson_day

        random.seed(99)
        numpy.random.seed(99)
        before = (random.random(), numpy.random.random())
        random.seed(99)
        numpy.random.seed(99)
        day = richardson_day(5)
        self.assertEqual((random.random(), numpy.random.random()), before)  # global generators put back
        self.assertEqual(len(day), 1440)
        self.assertEqual(day, richardson_day(5))
        self.assertNotEqual(day, richardson_day(6))
        self.assertTrue(100.0 < sum(day) / len(day) < 2000.0)  # a household's mean W

    def test_pvlib_clear_sky_at_noon(self):
        from meteremu.lab.profiles import Site, clear_sky_pv

        noon = clear_sky_pv(Site(start="11:00"), 60.0, 1000.0)  # Berlin, 21 June, 13:00 CEST
        night = clear_sky_pv(Site(start="23:00"), 60.0, 1000.0)
        self.assertTrue(800.0 < noon[0] < 1100.0, noon[0])
        self.assertEqual(max(night), 0.0)


class CatalogueTests(SynchronousTestCase):
    def test_at_least_twenty_scenarios_that_resolve(self):
        self.assertGreaterEqual(len(catalogue.CATALOGUE), 20)
        for scenario in catalogue.CATALOGUE.values():
            for spec in scenario.batteries:
                spec.resolved()
            setup_for(scenario, "weights")
        self.assertRaises(catalogue.UnknownScenario, catalogue.get, "nope")


class CompareTests(SynchronousTestCase):
    def results(self, value: float) -> dict[str, Any]:
        runs = [{"seed": s, "metrics": {k: value + s * 0.01 for k in metrics.METRICS}} for s in range(5)]
        return {"results": {"x": {"runs": runs}}}

    def test_regression_flagged_beyond_interval(self):
        deltas = compare(self.results(10.0), self.results(12.0))
        flagged = {d.metric for d in deltas if d.verdict == "REGRESSION"}
        self.assertIn("grid_rms_w", flagged)
        self.assertNotIn("oracle_cost_ct", flagged)  # not a regulation score
        self.assertIn("regressions", format_table(deltas))
        same = compare(self.results(10.0), self.results(10.0))
        self.assertFalse([d for d in same if d.verdict])
