"""The gen1 endpoints of the Pro 3EM (``/status``, ``/emeter/<n>``, ``/settings``) over HTTP.

Read as gen1 clients do: evcc's ``shelly-3em`` template sums
``.emeters[].power`` of ``/status`` and reads ``/emeter/0``'s ``current``.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import HTTPClient, sample_reading, start_app, test_config
from tests.support.fuzz import fuzz_settings

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h"}}}
EMETER_KEYS = ["power", "reactive", "pf", "current", "voltage", "is_valid", "total", "total_returned"]


class Gen1Tests(TestCase):
    timeout = 30

    @inlineCallbacks
    def start(self, **device):
        config = test_config(self.mktemp(), meters=SIM, devices=[{"type": "shelly_pro_3em", "mac": "C8F09E0A1B2C",
                                                                   "websocket": False, **device}])
        app = yield start_app(self, config)
        meter = app.meters["grid"]
        meter.update(sample_reading(meter.latest.measured_at + 1))
        return app, HTTPClient(self), f"http://127.0.0.1:{app.http_port()}"

    @inlineCallbacks
    def test_status_emeters_and_settings(self):
        app, http, base = yield self.start()
        reading = app.meters["grid"].latest
        response, body = yield http.get(f"{base}/status")
        self.assertEqual(response.code, 200)
        status = json.loads(body)
        self.assertEqual([list(e) for e in status["emeters"]], [EMETER_KEYS] * 3)
        # evcc: power = .emeters | map(.power) | add
        self.assertAlmostEqual(sum(e["power"] for e in status["emeters"]), reading.total_act_power, places=1)
        self.assertEqual(status["cloud"], {"enabled": False, "connected": False})
        self.assertEqual(status["mac"], "C8F09E0A1B2C")
        for index in range(3):
            _, body = yield http.get(f"{base}/emeter/{index}")
            emeter = json.loads(body)
            self.assertEqual(emeter["voltage"], round(reading.phase(index).voltage, 2))
            self.assertEqual(emeter["current"], round(reading.phase(index).current, 2))
            self.assertTrue(emeter["is_valid"])
        response, body = yield http.get(f"{base}/emeter/3")
        self.assertEqual(response.code, 404)
        _, body = yield http.get(f"{base}/settings")
        settings = json.loads(body)
        self.assertEqual(settings["device"]["hostname"], "shellypro3em-c8f09e0a1b2c")
        self.assertEqual(settings["device"]["num_meters"], 3)
        # Gen1 polls count as a battery polling, like EM.GetStatus.
        device = app.devices[0]
        self.assertEqual(device.clients.active_batteries(), ["127.0.0.1"])

    @inlineCallbacks
    def test_stale_meter_under_error(self):
        app, http, base = yield self.start()
        app.meters["grid"].report_failure("test: unplugged")
        response, body = yield http.get(f"{base}/status")
        self.assertEqual(response.code, 200)  # still answers, as Shelly.GetStatus does
        emeters = json.loads(body)["emeters"]
        self.assertEqual({(e["is_valid"], e["power"]) for e in emeters}, {(False, None)})
        response, body = yield http.get(f"{base}/emeter/0")
        self.assertEqual(response.code, 503)
        self.assertIn("grid", json.loads(body)["error"])

    @inlineCallbacks
    def test_off_when_configured(self):
        _, http, base = yield self.start(gen1_endpoints=False)
        for path in ("/status", "/emeter/0", "/settings"):
            response, _ = yield http.get(base + path)
            self.assertEqual(response.code, 404, path)

    @inlineCallbacks
    def test_any_emeter_segment(self):
        """The one parameter a gen1 route reads from the path: 404 or an answer, never 500."""
        _, http, base = yield self.start()
        segments: list[str] = []

        @fuzz_settings(60)
        @given(st.text(max_size=12))
        def collect(text: str) -> None:
            segments.append(text)

        collect()
        for text in segments:
            response, body = yield http.get(f"{base}/emeter/{quote(text, safe='')}")
            self.assertIn(response.code, (200, 404), (text, body[:200]))
            if response.code == 404 and body.startswith(b"{"):
                self.assertIn("error", json.loads(body))
