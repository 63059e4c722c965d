"""Devices are plug-ins: the application builds whatever the registry names."""

from __future__ import annotations

import json

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from meteremu import devices
from tests.support import HTTPClient, sample_reading, start_app, test_config

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h"}}}


class PluginTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.patch(devices, "DEVICE_MODULES", {**devices.DEVICE_MODULES, "test_face": "tests.support.fake_face"})
        self.patch(devices._options, "_modules", devices.DEVICE_MODULES)

    @inlineCallbacks
    def test_a_registered_face_is_built_served_and_listed(self) -> None:
        config = test_config(self.mktemp(), meters=SIM, devices=[{"type": "test_face", "greeting": "bonjour"}])
        app = yield start_app(self, config)
        self.assertEqual([type(d).__name__ for d in app.devices], ["FaceDevice"])
        app.meters["grid"].update(sample_reading(app.meters["grid"].latest.measured_at + 1))
        http = HTTPClient(self)
        base = f"http://127.0.0.1:{app.http_port()}"
        _, body = yield http.get(f"{base}/face")
        self.assertEqual(body, b"bonjour 1925.8 W")
        response, _ = yield http.get(f"{base}/shelly")
        self.assertEqual(response.code, 404)  # only what the face itself serves
        _, body = yield http.get(f"{base}/admin/overview")
        overview = json.loads(body)["devices"]
        self.assertTrue(overview["0"]["id"].startswith("face-b43a45"))
        self.assertEqual(overview["0"]["model"], "FACE-1")
        _, body = yield http.get(f"{base}/metrics")
        self.assertIn(b'meteremu_device_info{device="face-b43a45', body)
        # Its MAC is kept in the store under its position, like every face's.
        self.assertEqual(app.store.get("device:0:mac")[:6], "B43A45")

    def test_unknown_device_type_is_a_config_error(self) -> None:
        from meteremu.config import ConfigError

        err = self.assertRaises(ConfigError, test_config, self.mktemp(), meters=SIM,
                                devices=[{"type": "no_such_face"}])
        self.assertIn("devices[0].type", str(err))
