"""The battery lab with real parts: both clocks on one scenario, the report in Chromium, the CLI.

The real-time run starts a real mosquitto and a whole meteremu on loopback
ports (meteremu.lab.realtime), with one battery polling over UDP and one over
HTTP, each from its own 127.0.0.x address; the simulated run drives the same
device objects in-process. Tolerances are stated where they are asserted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meteremu.lab import catalogue
from meteremu.lab.battery import BatterySpec
from meteremu.lab.household import Appliance, HouseholdSpec
from meteremu.lab.meterpath import TOPIC, DeviceSetup, meteremu_config
from meteremu.lab.metrics import score
from meteremu.lab.realtime import free_port, parse_feed, parse_target, run_realtime
from meteremu.lab.report import render
from meteremu.lab.runner import run_many, setup_for
from meteremu.lab.scenario import Scenario
from meteremu.lab.sim import Simulation
from tests.support import start_app
from tests.support.browser import browser_skip, headless_chrome
from tests.support.mosquitto import Mosquitto, mosquitto_skip

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TwoClocksTests(TestCase):
    """``short_step`` (25 s: a 1 kW step, Venus over UDP, Hoymiles over HTTP) on both clocks.

    Tolerance: energies within 25 % + 0.3 Wh, grid RMS within 15 %, each
    battery's mean output over the last 10 s within 80 W, and both clocks
    answer at least 90 % of the polls. A loaded CI machine adds scheduling
    jitter of some milliseconds to the real run; these bounds hold it.
    """

    skip = mosquitto_skip()
    timeout = 90

    @inlineCallbacks
    def test_simulated_and_real_time_agree(self):
        scenario = catalogue.get("short_step")
        setup = setup_for(scenario, "divide")
        simulated = Simulation(scenario, 0, setup).run()
        real = yield run_realtime(scenario, 0, setup, reactor)
        sim_m, real_m = score(simulated), score(real)
        for key in ("import_wh", "export_wh"):
            self.assertLessEqual(abs(sim_m[key] - real_m[key]), 0.25 * sim_m[key] + 0.3, key)
        self.assertLessEqual(abs(sim_m["grid_rms_w"] - real_m["grid_rms_w"]), 0.15 * sim_m["grid_rms_w"])
        tail = int(10 / 0.5)
        for i, (sb, rb) in enumerate(zip(simulated.batteries, real.batteries, strict=True)):
            self.assertGreaterEqual(rb.answers, 0.9 * rb.polls, rb.spec.transport)
            self.assertGreaterEqual(sb.answers, 0.9 * sb.polls)
            sim_tail = simulated.trace.power[i][-tail:]
            real_tail = real.trace.power[i][-tail:]
            self.assertLess(abs(sum(sim_tail) / tail - sum(real_tail) / tail), 80.0, rb.spec.model)
        self.assertEqual({b.spec.transport for b in real.batteries}, {"udp1010", "http"})
        # the batteries really regulated: most of the 1 kW step is covered
        self.assertGreater(sum(p[-1] for p in real.trace.power), 700.0)


class ExternalEmulatorTests(TestCase):
    """``--target``/``--feed``: the lab knows only addresses; here a meteremu the test runs.

    An 8 s run, a step at 1.2 s, with a Venus over UDP and a Hoymiles over HTTP: both are answered, and
    together they cover most of the 800 W step.
    """

    skip = mosquitto_skip()
    timeout = 60

    @inlineCallbacks
    def test_run_against_an_emulator_by_address(self):
        broker = Mosquitto(self)
        yield broker.start()
        udp = free_port(socket.SOCK_DGRAM)
        config = meteremu_config(DeviceSetup(scaling="divide"), broker.port, (udp,), http_port=0,
                                 state_dir=os.path.abspath(self.mktemp()))
        os.makedirs(config.store.path.rsplit("/", 1)[0], exist_ok=True)
        app = yield start_app(self, config)
        scenario = Scenario("external", "test", 8.0,
                            HouseholdSpec(noise=0.0, appliances=(Appliance("step", 0.15, power=800.0,
                                                                           duration=100.0, jitter=0.0),)),
                            (BatterySpec("venus"), BatterySpec("hoymiles", phase=1)))
        targets = (parse_target(f"udp://127.0.0.1:{udp}"), parse_target(f"http://127.0.0.1:{app.http_port()}"))
        loop = yield run_realtime(scenario, 1, DeviceSetup(), reactor, targets,
                                  parse_feed(f"mqtt://127.0.0.1:{broker.port}/{TOPIC}"))
        for b in loop.batteries:  # the first poll may come before the meter's first reading
            self.assertGreaterEqual(b.answers, b.polls - 2, b.spec.transport)
        self.assertGreater(sum(p[-1] for p in loop.trace.power), 500.0)
        clients = {c["ip"]: c for c in app.overview()["devices"]["0"]["clients"]}
        self.assertEqual(set(clients), {"127.0.0.11", "127.0.0.12"})  # one client per battery address
        self.assertEqual({c["transport"] for c in clients.values()}, {"udp", "http"})


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meteremu.lab.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


class CliInputTests(SynchronousTestCase):
    def one_clear_line(self, result: subprocess.CompletedProcess[str], text: str) -> None:
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("meteremu-lab: "), lines[0])
        self.assertIn(text, lines[0])

    def test_unknown_scenario(self):
        self.one_clear_line(run_cli("run", "no_such_scenario"), "unknown scenario 'no_such_scenario'")

    def test_bad_target(self):
        self.one_clear_line(run_cli("run", "short_step", "--realtime", "--target", "ftp://127.0.0.1:1"),
                            "bad --target")
        self.one_clear_line(run_cli("run", "short_step", "--target", "udp://127.0.0.1:9"), "--realtime")
        self.one_clear_line(run_cli("run", "short_step", "--realtime", "--target", "udp://127.0.0.1:99999",
                                    "--feed", "mqtt://127.0.0.1:1/t"), "port")

    def test_unreadable_results(self):
        self.one_clear_line(run_cli("compare", "/nonexistent/a.json", "/nonexistent/b.json"), "cannot read")

    def test_compare_names_what_each_file_measured(self):
        results = run_many(["pair_step"], [0], "ct002", 1)
        paths = []
        for label in ("meteremu", "a peer's CT002"):
            results["meta"]["emulator"] = label
            paths.append(os.path.abspath(self.mktemp()))
            with open(paths[-1], "w", encoding="utf-8") as handle:
                json.dump(results, handle)
        result = run_cli("compare", *paths)
        self.assertEqual(result.returncode, 0, result.stderr)
        first, second = result.stdout.splitlines()[:2]
        self.assertTrue(first.startswith("A: meteremu; simulated clock, scaling ct002, 1 seeds"), first)
        self.assertTrue(second.startswith("B: a peer's CT002; "), second)

    def test_merge_refuses_two_modes(self):
        paths = []
        for mode in ("ct002", "ct002_relay"):
            paths.append(os.path.abspath(self.mktemp()))
            with open(paths[-1], "w", encoding="utf-8") as handle:
                json.dump(run_many(["pair_step"], [0], mode, 1), handle)
        self.one_clear_line(run_cli("merge", *paths, "--out", self.mktemp()), "cannot merge: scaling")

    def test_the_service_never_imports_the_lab(self):
        code = ("import sys, meteremu.tap, meteremu.app, meteremu.devices.shelly.service, meteremu.sources.mqtt; "
                "print(sorted(m for m in sys.modules if m.startswith(('meteremu.lab', 'pvlib', 'richardsonpy'))))")
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        self.assertEqual(result.stdout.strip(), "[]", result.stderr)

    def test_list(self):
        result = run_cli("list")
        self.assertEqual(result.returncode, 0)
        self.assertGreaterEqual(len(result.stdout.splitlines()), 20)
        self.assertIn("venus_washer", result.stdout)


class UnreachableEmulatorTests(TestCase):
    skip = mosquitto_skip()
    timeout = 60

    @inlineCallbacks
    def test_unreachable_emulator(self):
        broker = Mosquitto(self)
        yield broker.start()
        silent = free_port()
        result = yield threads.deferToThread(
            run_cli, "run", "short_step", "--realtime", "--seeds", "1", "--target", f"udp://127.0.0.1:{silent}",
            "--target", f"http://127.0.0.1:{silent}", "--feed", f"mqtt://127.0.0.1:{broker.port}/lab",
            "--out", self.mktemp())
        CliInputTests.one_clear_line(self, result, "no answer from")  # type: ignore[arg-type]


def look_at(path: str, out: str) -> dict[str, Any]:
    """Open the report in headless Chromium (a thread: selenium blocks) and read the plots."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chrome(out, window="1280,1400")
    try:
        driver.set_page_load_timeout(30)
        driver.get("file://" + path)
        WebDriverWait(driver, 30, poll_frequency=0.1).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-rendered") == "yes")
        paths = driver.find_elements(By.CSS_SELECTOR, "svg.plot path.series")
        driver.save_screenshot(os.path.join(out, "report.png"))
        return {"plots": len(driver.find_elements(By.CSS_SELECTOR, "svg.plot")),
                "series": {p.get_attribute("data-label"): len(p.get_attribute("d") or "") for p in paths},
                "errors": driver.execute_script("return window.__errors || []")}
    finally:
        driver.quit()


class ReportInChromiumTests(TestCase):
    skip = browser_skip()
    timeout = 90

    @inlineCallbacks
    def test_report_has_plots_with_data(self):
        results = run_many(["short_step"], [0, 1], "weights", jobs=1)
        self.assertEqual(json.loads(json.dumps(results))["results"]["short_step"]["trace"]["t"][0], 0.0)
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        path = os.path.join(out, "report.html")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(render(results))
        with open(path, encoding="utf-8") as handle:
            page = handle.read()
        self.assertNotIn("http://", page.replace("http://www.w3.org/2000/svg", ""))  # nothing fetched
        self.assertNotIn("https://", page)
        seen = yield threads.deferToThread(look_at, path, out)
        self.assertEqual(seen["plots"], 1)
        self.assertGreater(seen["series"]["grid (true)"], 500)  # a path of ~60 points
        powered = [label for label, size in seen["series"].items() if label.endswith(" output") and size > 500]
        self.assertEqual(len(powered), 2, seen["series"])
