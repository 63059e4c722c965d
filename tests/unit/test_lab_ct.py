"""The battery lab's CT002 path on the simulated clock: frames, the battery's dedupe, a whole run."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meteremu.devices.marstek import ct_codec as codec
from meteremu.lab import catalogue, ctclient
from meteremu.lab.battery import Battery, BatterySpec
from meteremu.lab.runner import SCALINGS, setup_for
from meteremu.lab.sim import Simulation


class CtClientTests(SynchronousTestCase):
    def test_inspects_then_joins_the_combined_bucket(self) -> None:
        battery = Battery.build(BatterySpec("venus"), 0)
        first = codec.parse_request(ctclient.request(battery))
        self.assertEqual((first.battery_type, first.battery_mac, first.phase), ("VNSE3-0", battery.mac, ""))
        battery.observe(0.0, 0.0, inspecting=True)
        self.assertEqual(codec.parse_request(ctclient.request(battery)).phase, "D")

    def test_reads_the_total_and_the_abc_count(self) -> None:
        battery = Battery.build(BatterySpec("hmg50"), 1)
        answer = codec.CtResponse("HME-4", "", "HMG-50", battery.mac, (10, 20, 30), 60, (0, 0, 0, 2), info_idx=9)
        read = ctclient.read(battery, codec.encode_response(answer, "ct002"))
        assert read is not None
        self.assertEqual((read.value, read.nb, read.info_idx), (60.0, 2, 9))
        other = codec.CtResponse("HME-4", "", "HMG-50", "FFFFFFFFFFFF", (0, 0, 0), 60, (1, 1, 1, 1))
        self.assertIsNone(ctclient.read(battery, codec.encode_response(other, "ct002")))
        self.assertIsNone(ctclient.read(battery, b"garbage"))

    def test_a_repeated_info_idx_is_not_regulated_on(self) -> None:
        battery = Battery.build(BatterySpec("venus", gate=0.0), 0)
        battery.observe(1.0, 300.0, 1, 5)
        after_first = battery.setpoint
        battery.observe(2.0, 300.0, 1, 5)  # the same answer again: alive, no second step
        self.assertEqual(battery.setpoint, after_first)
        self.assertEqual(battery.answers, 2)
        battery.observe(3.0, 300.0, 1, 6)
        self.assertGreater(battery.setpoint, after_first)

    def test_a_bucket_of_two_takes_a_jump_on_the_first_send(self) -> None:
        """The controller's default bucket (2, the value doubled) passes the one-shot spike filter."""
        for nb, first_send in ((1, 0), (2, 595)):  # 600 − 5: the law's importing step
            battery = Battery.build(BatterySpec("venus", gate=0.0), 0)
            battery.observe(1.0, 0.0, 1, 1)  # steady at 0 W, baseline g = 0
            battery.observe(2.0, 600.0 * nb, nb, 2)  # a step: +600 W (served as 600 · nb)
            self.assertEqual(battery.setpoint, first_send, nb)


class CtRunTests(SynchronousTestCase):
    def test_ct_targets(self) -> None:
        from meteremu.lab.realtime import RealtimeError, parse_target

        target = parse_target("ct://127.0.0.1:12345")
        self.assertEqual((target.scheme, target.port), ("ct", 12345))
        self.assertRaises(RealtimeError, parse_target, "ct://127.0.0.1")

    def test_modes_are_known_and_map_to_the_faces(self) -> None:
        scenario = catalogue.get("pair_step")
        self.assertIn("ct002", SCALINGS)
        self.assertEqual((setup_for(scenario, "ct002").face, setup_for(scenario, "ct002").control), ("ct002", True))
        relay = setup_for(scenario, "ct002_relay")
        self.assertEqual((relay.face, relay.control, relay.weights), ("ct002", False, ()))
        shelly = setup_for(scenario, "control")
        self.assertEqual((shelly.face, shelly.control, shelly.scaling), ("shelly", True, "none"))
        self.assertEqual([k for k, _ in shelly.weights], ["127.0.0.11", "127.0.0.12"])

    def test_a_pair_over_ct002_closes_a_2_kw_step(self) -> None:
        for mode in ("ct002", "ct002_relay", "control"):
            scenario = catalogue.get("pair_step")
            sim = Simulation(scenario, 0, setup_for(scenario, mode))
            loop = sim.run()
            self.assertTrue(all(b.answers > 0 for b in loop.batteries), mode)
            grid = loop.trace.grid
            self.assertTrue(all(math.isfinite(g) for g in grid))
            self.assertLess(abs(grid[-1]), 100.0, mode)  # 24 s after the step the batteries carry it
            self.assertGreater(sum(b.power for b in loop.batteries), 1500.0, mode)

    def test_the_ungated_pair_differs_only_in_the_gate(self) -> None:
        """pair_step_ungated: AstraMeter's simulator's reading of the Marstek law (a step on every answer)."""
        gated, ungated = catalogue.get("pair_step"), catalogue.get("pair_step_ungated")
        self.assertEqual([b.resolved().gate for b in gated.batteries], [3.0, 3.0])
        self.assertEqual([b.resolved().gate for b in ungated.batteries], [0.0, 0.0])
        self.assertEqual([dataclasses.replace(b, gate=None) for b in ungated.batteries], list(gated.batteries))
        self.assertEqual((ungated.household, ungated.duration), (gated.household, gated.duration))


class GoalsTableTests(SynchronousTestCase):
    def results(self, mode: str, avoidable: float, settle: float, crossings: float) -> dict[str, object]:
        def entry(batteries: list[str], a: float, c: float) -> dict[str, object]:
            summary = {"avoidable_import_wh": [a, a, a], "big_step_settle_s": [settle, settle, settle + 1],
                       "band_crossings_per_h": [c, c, c], "grid_rms_w": [1.0, 1.0, 1.0]}
            return {"batteries": batteries, "summary": summary}
        return {"scaling": mode, "seeds": [0, 1], "clock": "simulated",
                "meta": {"machine": "m", "date": "d", "commit": "c"},
                "results": {"two_venus_steps": entry(["venus", "venus"], avoidable, crossings),
                            "venus_steps": entry(["venus"], 5.0, 100.0)}}

    def steered(self, files: list[dict[str, Any]], steerable: dict[str, float], hunting: dict[str, float]) -> None:
        """Add the steered metrics to the two-battery entries of ``files`` (by mode)."""
        for f in files:
            summary = f["results"]["two_venus_steps"]["summary"]
            s, h = steerable[f["scaling"]], hunting[f["scaling"]]
            summary.update(steerable_import_wh=[s, s, s], hunting_per_h=[h, h, h])
            single = f["results"]["venus_steps"]["summary"]
            single.update(steerable_import_wh=[2.0, 2.0, 2.0], hunting_per_h=[50.0, 50.0, 50.0])

    def test_an_older_results_file_is_judged_on_the_raw_metrics(self) -> None:
        from meteremu.lab.report import markdown_goals, markdown_header

        files = [self.results("none", 30.0, 40.0, 400.0), self.results("divide", 20.0, 30.0, 90.0),
                 self.results("ct002", 10.0, 12.0, 80.0), self.results("control", 15.0, 20.0, 120.0)]
        table = markdown_goals(files)
        self.assertIn("| two_venus_steps | ct002 | 30.0 / 20.0 / 10.0 | 67% | 50% | 12.0 [13.0] | 80 vs 100 | ✓ "
                      "| 67% / 50% | 80 vs 100 |", table)
        self.assertIn("| two_venus_steps | control | 30.0 / 20.0 / 15.0 | 50% | 25% | 20.0 [21.0] | 120 vs 100 "
                      "| ✗ 3 missed |", table)
        self.assertIn("| venus_steps | ct002 | — / — | 5.0 / 5.0 | — / — | 100.0 / 100.0 | 1.0 / 1.0 |", table)
        self.assertIn("Machine: m.", markdown_header(files))

    def test_goals_are_judged_without_the_household_noise(self) -> None:
        from meteremu.lab.report import markdown_goals

        files = [self.results("none", 30.0, 40.0, 400.0), self.results("divide", 20.0, 30.0, 90.0),
                 self.results("ct002", 25.0, 12.0, 300.0)]
        self.steered(files, {"none": 20.0, "divide": 10.0, "ct002": 4.0}, {"none": 60.0, "divide": 40.0, "ct002": 30.0})
        table = markdown_goals(files)
        # raw: 17 % / -25 % cut and 300 crossings against 100 would miss three goals; steered all pass
        self.assertIn("| two_venus_steps | ct002 | 20.0 / 10.0 / 4.0 | 80% | 60% | 12.0 [13.0] | 30 vs 50 | ✓ "
                      "| 17% / -25% | 300 vs 100 |", table)
        self.assertIn("| venus_steps | ct002 | 2.0 / 2.0 | 5.0 / 5.0 | 50.0 / 50.0 | 100.0 / 100.0 | 1.0 / 1.0 |",
                      table)
        self.steered(files, {"none": 20.0, "divide": 10.0, "ct002": 8.0}, {"none": 60.0, "divide": 40.0, "ct002": 51.0})
        self.assertIn("| 20.0 / 10.0 / 8.0 | 60% | 20% | 12.0 [13.0] | 51 vs 50 | ✗ 2 missed |", markdown_goals(files))


class MeasuredTests(SynchronousTestCase):
    """A results file says what it measured, so a comparison with a peer's CT002 reads on its own."""

    def args(self, *argv: str) -> argparse.Namespace:
        from meteremu.lab.cli import parser

        return parser().parse_args(["run", "pair_step", *argv])

    def test_meteremu_the_targets_or_the_label(self) -> None:
        from meteremu.lab.cli import measured

        self.assertEqual(measured(self.args()), {"emulator": "meteremu"})
        peer = ("--realtime", "--target", "ct://127.0.0.1:12345", "--feed", "mqtt://127.0.0.1:1883/lab/grid")
        self.assertEqual(measured(self.args(*peer)),
                         {"emulator": "ct://127.0.0.1:12345", "feed": "mqtt://127.0.0.1:1883/lab/grid"})
        self.assertEqual(measured(self.args(*peer, "--label", "AstraMeter 2.2.3"))["emulator"],
                         "AstraMeter 2.2.3")

    def test_reports_and_headers_name_it(self) -> None:
        from meteremu.lab.report import describe, emulator, markdown_header

        def results(meta: dict[str, str]) -> dict[str, object]:
            return {"scaling": "ct002", "seeds": [0, 1], "clock": "realtime", "results": {},
                    "meta": {"machine": "m", "date": "d", "commit": "c", **meta}}
        old, peer = results({}), results({"emulator": "AstraMeter 2.2.3", "feed": "mqtt://h:1/t"})
        self.assertEqual(emulator(old), "meteremu")  # files from before meta.emulator
        self.assertEqual(describe(peer), "AstraMeter 2.2.3 fed by mqtt://h:1/t; realtime clock, scaling ct002, "
                                         "2 seeds; lab commit c, d")
        self.assertNotIn("Measured", markdown_header([old, old]))
        self.assertIn("Measured: meteremu; AstraMeter 2.2.3.", markdown_header([old, peer]))

    def test_the_table_tells_emulators_and_clocks_apart(self) -> None:
        from meteremu.lab.report import markdown_table

        summary = {k: [1.0, 1.0, 1.0] for k in ("grid_rms_w", "band_crossings_per_h", "settle_mean_s",
                                                 "overshoot_max_w", "avoidable_import_wh", "avoidable_export_wh",
                                                 "cost_regret_ct", "share_imbalance_w")}

        def results(emulator: str, clock: str, rms: float) -> dict[str, object]:
            entry = {"summary": {**summary, "grid_rms_w": [rms, rms, rms]}}
            return {"scaling": "ct002", "clock": clock, "meta": {"emulator": emulator},
                    "results": {"pair_step": entry}}
        table = markdown_table([results("meteremu", "realtime", 500.0), results("peer", "realtime", 900.0)])
        self.assertIn("| pair_step | ct002, meteremu | 500.0 [500.0, 500.0] |", table)
        self.assertIn("| pair_step | ct002, peer | 900.0 [900.0, 900.0] |", table)
        table = markdown_table([results("meteremu", "simulated", 500.0), results("meteremu", "realtime", 501.0)])
        self.assertIn("| pair_step | ct002, simulated clock | 500.0", table)
        self.assertIn("| pair_step | ct002, realtime clock | 501.0", table)
        table = markdown_table([results("meteremu", "simulated", 500.0)])
        self.assertIn("| pair_step | ct002 | 500.0", table)


class MergeTests(SynchronousTestCase):
    """Seeds run one invocation at a time (a fresh peer each) become one results file."""

    def test_the_same_as_one_run_of_all_seeds(self) -> None:
        from meteremu.lab.runner import merge, run_many

        whole = run_many(["pair_step"], [0, 1, 2], "ct002", 1)
        parts = [run_many(["pair_step"], [seed], "ct002", 1) for seed in (2, 0, 1)]
        for part in parts:
            part["meta"].update(emulator="peer", feed="mqtt://h:1/t")
        merged = merge(parts)
        self.assertEqual(merged["seeds"], [0, 1, 2])
        self.assertEqual(merged["results"]["pair_step"]["summary"], whole["results"]["pair_step"]["summary"])
        self.assertEqual(merged["results"]["pair_step"]["runs"], whole["results"]["pair_step"]["runs"])
        self.assertEqual(merged["results"]["pair_step"]["trace"], whole["results"]["pair_step"]["trace"])  # seed 0's
        self.assertEqual((merged["meta"]["emulator"], merged["meta"]["feed"], merged["meta"]["merged"]),
                         ("peer", "mqtt://h:1/t", 3))

    def test_refuses_another_mode_or_a_seed_twice(self) -> None:
        from meteremu.lab.runner import MergeError, merge, run_many

        one = run_many(["pair_step"], [0], "ct002", 1)
        self.assertRaises(MergeError, merge, [one, run_many(["pair_step"], [1], "ct002_relay", 1)])
        self.assertRaisesRegex(MergeError, "seed 0", merge, [one, run_many(["pair_step"], [0], "ct002", 1)])
        self.assertRaises(MergeError, merge, [])
