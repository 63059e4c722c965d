"""HomeWizard P1 meter: the captured v1/v2 payloads (check 25) mapped purely,
then served by local test servers — v1 over HTTP, v2 over HTTPS with a
certificate generated at test time, bearer token and WebSocket push — through
the source into a Meter and out of the Shelly's EM.GetStatus."""

from __future__ import annotations

from datetime import datetime

from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, parse_config
from meteremu.sources.homewizard.options import host_port
from meteremu.sources.homewizard.parse import parse_measurement, parse_v1_time
from tests.support.fake_homewizard import TOKEN, v1_body, v2_body
from tests.support.p1 import register_sources
from tests.support.shared.homewizard import AMS

ARRIVAL = 2_000_000_000.0


class MappingTests(SynchronousTestCase):
    def test_v1_fixture(self):
        # Check 25 (v1).
        m = parse_measurement(v1_body(), "v1", ARRIVAL, AMS)
        r = m.reading
        self.assertEqual(r.powers(), (-676.0, 133.0, 0.0))
        self.assertEqual(r.total_act_power, -543.0)
        self.assertEqual([p.current for p in r.phases], [4.0, 2.0, 0.0])  # |−4|: currents are unsigned
        self.assertEqual([p.voltage for p in r.phases], [230.0] * 3)  # no voltage keys: nominal
        self.assertEqual([p.freq for p in r.phases], [50.0] * 3)
        for p in r.phases:
            self.assertLessEqual(abs(p.pf), 1.0)
        self.assertEqual(r.energy, ((13779338.0, 0.0),))  # 10830.511 + 2948.827 kWh, on phase A
        self.assertEqual(r.measured_at, ARRIVAL)  # v1 has no timestamp
        x = r.extras
        self.assertEqual(x["gas_m3"], 2569.646)
        self.assertEqual(x["month_peak_w"], 1111.0)  # from the misspelled montly_power_peak_w
        self.assertEqual(x["average_demand_w"], 123.0)
        self.assertEqual((x["energy_import_t1_kwh"], x["energy_import_t2_kwh"]), (10830.511, 2948.827))
        self.assertEqual(x["tariff"], 2.0)
        self.assertEqual((x["water_m3"], x["warm_water_m3"]), (444.444, 333.333))
        self.assertNotIn("gas_m3.4E474C5944", x)  # the same gas meter, listed twice
        self.assertEqual(m.labels["water_m3"], {"kind": "water", "unique_id": "4E475347"})
        gas = [d for d in m.devices if d["key"] == "gas_m3"][0]
        self.assertEqual(gas["at"], "2021-06-06T14:00:10+02:00")
        self.assertEqual((m.smr_version, m.meter_model), (50, "ISKRA  2M550T-101"))

    def test_v2_fixture(self):
        # Check 25 (v2): same numbers under other names.
        m = parse_measurement(v2_body(), "v2", ARRIVAL, AMS)
        r = m.reading
        self.assertEqual(r.powers(), (-676.0, 133.0, 0.0))
        self.assertEqual(r.energy, ((13779338.0, 0.0),))
        self.assertEqual(sum(p.current for p in r.phases), 6.0)  # current_a = |−4|+|2|+|0|
        self.assertEqual(r.measured_at, datetime(2024, 6, 28, 14, 12, 34, tzinfo=AMS).timestamp())
        self.assertEqual((r.extras["gas_m3"], r.extras["water_m3"]), (2569.646, 123.456))
        self.assertEqual(r.extras["month_peak_w"], 1111.0)
        self.assertEqual(parse_measurement(v2_body(), "v2", ARRIVAL, AMS, "arrival").reading.measured_at,
                         ARRIVAL)

    def test_missing_keys_are_not_zero(self):
        body = {"power_w": 512, "timestamp": "2024-06-28T14:12:34"}
        r = parse_measurement(body, "v2", ARRIVAL, AMS).reading
        self.assertEqual(r.powers(), (512.0,))  # a total only: phase A
        self.assertIsNone(r.energy)
        self.assertEqual(dict(r.extras), {})
        body = {"power_w": 512, "power_l1_w": 500, "voltage_l1_v": 231.5, "energy_export_kwh": 1.5,
                "external": [{"type": "heat_meter", "value": 1.0, "unit": "GJ", "unique_id": "H"},
                             {"type": "gas_meter", "value": None, "unit": "m3"}, "junk"]}
        r = parse_measurement(body, "v2", ARRIVAL, AMS).reading
        self.assertEqual(r.powers(), (500.0,))
        self.assertEqual(r.phases[0].voltage, 231.5)
        self.assertEqual(r.energy, ((0.0, 1500.0),))
        self.assertAlmostEqual(r.extras["heat_energy_kwh"], 277.7778, places=4)
        self.assertNotIn("gas_m3", r.extras)
        self.assertRaises(ValueError, parse_measurement, {"wifi_ssid": "x"}, "v1", ARRIVAL)
        self.assertRaises(ValueError, parse_measurement, [1, 2], "v1", ARRIVAL)
        self.assertRaises(ValueError, parse_measurement, {"active_power_w": "12"}, "v1", ARRIVAL)

    def test_helpers(self):
        self.assertEqual(host_port("192.168.1.50", 443), ("192.168.1.50", 443))
        self.assertEqual(host_port("p1.local:8443", 443), ("p1.local", 8443))
        self.assertEqual(host_port("[fe80::1]:444", 443), ("fe80::1", 444))
        self.assertIsNone(parse_v1_time(2106061400, AMS))


class OptionsTests(SynchronousTestCase):
    def setUp(self):
        register_sources(self)

    def parse(self, **source):
        data = {"meters": {"p1": {"source": {"type": "homewizard", **source}}}, "devices": []}
        return parse_config(data, "t.yaml", env={}).meters["p1"].source.options

    def test_defaults(self):
        options = self.parse(host="192.168.1.50")
        self.assertEqual((options.api, options.interval, options.idle()), ("v1", 1.0, 30.0))
        options = self.parse(host="p1", api="v2", token=TOKEN, verify_ssl=False)
        self.assertEqual(options.mode, "websocket")
        self.assertNotIn(TOKEN, repr(options))

    def test_errors(self):
        cases = [
            ({"host": "p1", "token": TOKEN}, "token"),
            ({"host": "p1", "api": "v2", "verify_ssl": False}, "token"),
            ({"host": "p1", "api": "v2", "token": TOKEN}, "tls_fingerprint"),
            ({"host": "p1", "api": "v2", "token": TOKEN, "tls_fingerprint": "abc"}, "tls_fingerprint"),
            ({"host": "p1", "api": "v2", "token": TOKEN, "tls_fingerprint": "ab" * 32,
              "verify_ssl": False}, "verify_ssl"),
            ({"host": "p1", "api": "v2", "token": TOKEN, "ca_file": "/nonexistent.pem"}, "ca_file"),
            ({"host": "p1", "api": "v2", "token": TOKEN, "verify_ssl": False, "tls_name": "x"}, "tls_name"),
            ({"host": "http://p1/"}, "host"),
            ({"host": "p1", "timezone": "Mars/Olympus"}, "timezone"),
        ]
        for source, key in cases:
            with self.assertRaises(ConfigError) as caught:
                self.parse(**source)
            self.assertEqual(caught.exception.key, f"meters.p1.source.{key}", source)
