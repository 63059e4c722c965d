"""The EcoTracker's ``/v1/json`` document and ``powerAvg`` window (pure, no sockets)."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from meteremu.devices.ecotracker.body import PowerWindow, document, dumpb
from meteremu.devices.ecotracker.device import EcoTracker, generate_mac, make_identity
from meteremu.devices.ecotracker.options import Options
from meteremu.devices.shelly.options import FallbackPolicy
from meteremu.meter import Meter
from meteremu.reading import PhaseReading, Reading
from tests.support import sample_reading


def tracker(clock: Clock, **kw: object) -> EcoTracker:
    options = Options(meter="grid", **kw)  # type: ignore[arg-type]
    meter = Meter("grid", clock, stale_after=10.0, source_type="test")
    return EcoTracker(options, make_identity(options, "B43A452249C9"), meter, clock)


class DocumentTests(TestCase):
    def test_keys_order_and_types(self):
        """everHome's keys in order; power in whole W, counters in Wh with one decimal."""
        body = document(sample_reading(), 1800.4, 1540610.71, 5502204.64)
        self.assertEqual(list(body), ["power", "powerAvg", "powerPhase1", "powerPhase2", "powerPhase3",
                                      "energyCounterIn", "energyCounterOut"])
        self.assertEqual(body["power"], 1926)  # 2166.2 + 3.6 - 244.0
        self.assertEqual(body["powerAvg"], 1800)
        self.assertEqual([body[f"powerPhase{i}"] for i in (1, 2, 3)], [2166, 4, -244])
        self.assertEqual((body["energyCounterIn"], body["energyCounterOut"]), (1540610.7, 5502204.6))
        for key in ("power", "powerAvg", "powerPhase1"):
            self.assertIs(type(body[key]), int)

    def test_phases_can_be_left_out_and_average_defaults_to_power(self):
        body = document(sample_reading(), None, 0.0, 0.0, phases=False)
        self.assertEqual(list(body), ["power", "powerAvg", "energyCounterIn", "energyCounterOut"])
        self.assertEqual(body["powerAvg"], body["power"])

    def test_export_is_negative(self):
        reading = Reading(phases=(PhaseReading.from_power(-3127.4, voltage=230.0),), measured_at=1.0)
        self.assertEqual(json.loads(dumpb(document(reading, None, 1.0, 2.0)))["power"], -3127)


class WindowTests(TestCase):
    def test_mean_over_the_window_only(self):
        window = PowerWindow(60.0)
        self.assertIsNone(window.mean(0.0))
        for t, watts in ((0.0, 100.0), (30.0, 200.0), (61.0, 600.0)):
            window.add(t, watts)
        self.assertEqual(window.mean(61.0), 400.0)  # the sample at t=0 is out
        self.assertIsNone(window.mean(200.0))

    def test_non_finite_samples_are_ignored(self):
        window = PowerWindow(60.0)
        window.add(0.0, float("nan"))
        window.add(1.0, 10.0)
        self.assertEqual(window.mean(1.0), 10.0)


class StaleTests(TestCase):
    def test_error_policy_answers_503_with_the_reason(self):
        clock = Clock()
        device = tracker(clock)
        status, payload = device.answer("10.0.0.9")
        self.assertEqual(status, 503)
        self.assertIn("grid", json.loads(payload)["error"])
        device.meter.update(sample_reading())
        self.assertEqual(device.answer("10.0.0.9")[0], 200)
        clock.advance(11)
        self.assertEqual(device.answer("10.0.0.9")[0], 503)

    def test_hold_and_fallback(self):
        clock = Clock()
        held = tracker(clock, on_stale="hold")
        held.meter.update(sample_reading())
        clock.advance(11)
        status, payload = held.answer(None)
        self.assertEqual((status, json.loads(payload)["power"]), (200, 1926))
        fallback = tracker(clock, on_stale=FallbackPolicy(-50.0))
        status, payload = fallback.answer(None)
        body = json.loads(payload)
        self.assertEqual((status, body["power"], body["powerPhase1"], body["powerPhase2"]), (200, -50, -50, 0))

    def test_pollers_become_batteries(self):
        clock = Clock()
        device = tracker(clock)
        device.answer("10.0.0.9")
        self.assertEqual(device.clients.active_batteries(), [])
        device.answer("10.0.0.9")
        self.assertEqual(device.clients.active_batteries(), ["10.0.0.9"])
        self.assertEqual(device.clients.overview()[0]["requests"], 2)


class IdentityTests(TestCase):
    def test_everhome_oui_and_names(self):
        self.assertTrue(generate_mac().startswith("B43A45"))
        identity = make_identity(Options(), "b4:3a:45:22:49:c9")
        self.assertEqual(identity.device_id, "ecotracker-B43A452249C9")
        self.assertEqual(identity.serial, "b43a452249c9")

    def test_bad_options_are_named(self):
        errors = dict(Options(mac="xyz", average_window=0, serial="a b", http_port=70000).validate())
        self.assertEqual(set(errors), {"mac", "average_window", "serial", "http_port"})
