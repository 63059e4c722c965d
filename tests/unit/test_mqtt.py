"""MQTT exporter and Home Assistant discovery, against a real mosquitto and a real subscriber.

Pure parts (topics, payloads, discovery configs, change detection, options)
are checked synchronously. Everything else runs a mosquitto per test
(``tests.support.mosquitto``) and watches it with a paho subscriber on its own
thread; every wait is a Deferred with a timeout.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, parse_config
from meteremu.energy import EnergyCounters
from meteremu.exporters.mqtt import Options, TLSOptions
from meteremu.exporters.mqtt.topics import (
    ChangeTracker,
    Layout,
    RateLimit,
    availability,
    extra_param,
    format_value,
    json_state,
    reading_values,
    topic_level,
)
from meteremu.meter import Freshness, Meter
from meteremu.mqttclient import backoff_delay
from meteremu.reading import PhaseReading, Reading
from tests.support.shared.mqtt import T0, three_phase


class ValueTests(SynchronousTestCase):
    def test_three_phase_reading_gives_every_parameter(self):
        energy = EnergyCounters(3)
        energy.follow([(1000.0, 10.0), (2000.5, 0.0), (0.0, 3000.25)])
        values = reading_values(three_phase(extras={"pv_power": 1500.0}), energy)
        keys = [p.key for p, _ in values]
        self.assertEqual(keys[:6], ["a_act_power", "a_aprt_power", "a_voltage", "a_current", "a_pf", "a_freq"])
        self.assertEqual(keys[18:23], ["total_act_power", "total_aprt_power", "total_current",
                                       "a_import_energy", "a_export_energy"])
        self.assertEqual(keys[-3:], ["total_import_energy", "total_export_energy", "pv_power"])
        self.assertEqual(len(keys), 18 + 3 + 6 + 2 + 1)
        payloads = {p.key: format_value(v, p.decimals) for p, v in values}
        self.assertEqual(payloads["a_act_power"], "2166.2")
        self.assertEqual(payloads["c_act_power"], "-244.0")
        self.assertEqual(payloads["b_voltage"], "230.0")
        self.assertEqual(payloads["a_pf"], "0.99")
        self.assertEqual(payloads["a_freq"], "49.90")
        self.assertEqual(payloads["total_act_power"], "1925.8")
        self.assertEqual(payloads["b_import_energy"], "2000.5")
        self.assertEqual(payloads["c_export_energy"], "3000.2")
        self.assertEqual(payloads["total_import_energy"], "3000.5")
        self.assertEqual(payloads["total_export_energy"], "3010.2")
        self.assertEqual(payloads["pv_power"], "1500.0")
        self.assertRegex(payloads["a_current"], r"^\d+\.\d{3}$")

    def test_only_the_phases_a_reading_has(self):
        one = Reading((PhaseReading.from_power(500.0),), T0)
        keys = [p.key for p, _ in reading_values(one, EnergyCounters(3))]
        self.assertIn("a_act_power", keys)
        self.assertIn("a_import_energy", keys)
        self.assertFalse([k for k in keys if k.startswith(("b_", "c_"))])
        heat = Reading((), T0, extras={"gas": 1234.5678})
        values = reading_values(heat, EnergyCounters(3))
        self.assertEqual([p.key for p, _ in values], ["gas"])

    def test_extras_naming(self):
        cases = {
            # key: (parameter, entity name, unit, device_class, state_class, payload of 1234.5678)
            "inverter.122112345678": ("inverter_122112345678_power", "Inverter 122112345678 power", "W", "power",
                                      "measurement", "1234.6"),
            "inverter_122112345678_power": ("inverter_122112345678_power", "Inverter 122112345678 power", "W",
                                            "power", "measurement", "1234.6"),
            "circuit.Heat Pump": ("circuit_heat_pump_power", "Circuit Heat Pump power", "W", "power",
                                  "measurement", "1234.6"),
            "circuit_ev_share": ("circuit_ev_share", "Circuit EV share", None, None, "measurement", "1234.568"),
            "pv_power": ("pv_power", "PV power", "W", "power", "measurement", "1234.6"),
            "power_import_w": ("power_import_w", "Power import", "W", "power", "measurement", "1234.6"),
            "pv_energy_wh": ("pv_energy_wh", "PV energy", "Wh", "energy", "total_increasing", "1234.6"),
            "energy_import_t1_kwh": ("energy_import_t1_kwh", "Energy import t1", "kWh", "energy",
                                     "total_increasing", "1234.568"),
            "gas": ("gas", "Gas", "m³", "gas", "total_increasing", "1234.568"),
            "gas_m3": ("gas_m3", "Gas", "m³", "gas", "total_increasing", "1234.568"),
            "gas_m3.2": ("gas_m3_2", "Gas 2", "m³", "gas", "total_increasing", "1234.568"),
            "water_m3": ("water_m3", "Water", "m³", "water", "total_increasing", "1234.568"),
            "volume_m3": ("volume_m3", "Volume", "m³", "volume", "total_increasing", "1234.568"),
            "reactive_import_var": ("reactive_import_var", "Reactive import", "var", "reactive_power",
                                    "measurement", "1234.6"),
            "temp_inlet_c": ("temp_inlet_c", "Temp inlet", "°C", "temperature", "measurement", "1234.6"),
            "temp_diff_k": ("temp_diff_k", "Temp diff", "K", None, "measurement", "1234.6"),
            "pressure_inlet_bar": ("pressure_inlet_bar", "Pressure inlet", "bar", "pressure", "measurement",
                                   "1234.57"),
            "flow_lph": ("flow_lph", "Flow", "L/h", None, "measurement", "1234.6"),
            "operating_hours": ("operating_hours", "Operating hours", "h", "duration", "total_increasing", "1235"),
            "tariff": ("tariff", "Tariff", None, None, "measurement", "1234.568"),
            "state": ("extra_state", "State", None, None, "measurement", "1234.568"),
            "a_act_power": ("extra_a_act_power", "A act power", "W", "power", "measurement", "1234.6"),
        }
        for key, (slug_, name, unit, device_class, state_class, payload) in cases.items():
            param = extra_param(key)
            self.assertEqual((param.key, param.name, param.unit, param.device_class, param.state_class,
                              format_value(1234.5678, param.decimals)),
                             (slug_, name, unit, device_class, state_class, payload), key)
        self.assertEqual(format_value(2.0, extra_param("tariff").decimals), "2")
        self.assertEqual(format_value(-0.0001, extra_param("tariff").decimals), "0")

    def test_non_finite_values_are_not_published(self):
        values = reading_values(Reading((), T0, extras={"pv_power": float("nan"), "x": float("inf"), "y": 1.0}),
                                EnergyCounters(3))
        self.assertEqual([p.key for p, _ in values], ["y"])

    def test_format_value(self):
        self.assertEqual(format_value(-0.04, 1), "0.0")
        self.assertEqual(format_value(-0.0, 2), "0.00")
        self.assertEqual(format_value(1e6, 1), "1000000.0")
        self.assertEqual(format_value(0.987654, 3), "0.988")

    def test_json_state(self):
        reading = three_phase(extras={"inverter.1": 200.04})
        values = reading_values(reading, EnergyCounters(3))
        body = json.loads(json_state(reading, values))
        self.assertEqual(body["time"], T0)
        self.assertEqual(body["a_act_power"], 2166.2)
        self.assertEqual(body["inverter_1_power"], 200.0)
        self.assertEqual(body["total_import_energy"], 0.0)
        self.assertEqual(list(body)[:2], ["time", "a_act_power"])

    def test_availability_follows_freshness(self):
        self.assertEqual(availability(Freshness.FRESH), "online")
        self.assertEqual(availability(Freshness.STALE), "offline")
        self.assertEqual(availability(Freshness.DOWN), "offline")


class LayoutTests(SynchronousTestCase):
    def setUp(self):
        self.meter = Meter("grid", Clock(), source_type="envoy")
        self.layout = Layout("meters", "homeassistant", "meteremu")

    def test_topics(self):
        layout, meter = self.layout, self.meter
        self.assertEqual(layout.status_topic, "meters/status")
        self.assertEqual(layout.value_topic(meter, "a_act_power"), "meters/envoy/grid/a_act_power")
        self.assertEqual(layout.availability_topic(meter), "meters/envoy/grid/availability")
        self.assertEqual(layout.state_topic(meter), "meters/envoy/grid/state")
        self.assertEqual(layout.config_topic(meter, "a_act_power"),
                         "homeassistant/sensor/meteremu_grid/a_act_power/config")
        self.assertEqual(topic_level("a/b+c#d"), "a_b_c_d")
        odd = Meter("pv.roof-1", Clock(), source_type="simulator")
        self.assertEqual(layout.config_topic(odd, "pv_power"), "homeassistant/sensor/meteremu_pv_roof-1/pv_power/config")
        self.assertEqual(layout.value_topic(odd, "pv_power"), "meters/simulator/pv.roof-1/pv_power")

    def test_power_config_field_by_field(self):
        param = next(p for p, _ in reading_values(three_phase(), EnergyCounters(3)) if p.key == "a_act_power")
        config = json.loads(self.layout.config_payload(self.meter, param))
        self.assertEqual(config, {
            "name": "Phase A power",
            "unique_id": "meteremu_grid_a_act_power",
            "state_topic": "meters/envoy/grid/a_act_power",
            "availability": [{"topic": "meters/status"}, {"topic": "meters/envoy/grid/availability"}],
            "availability_mode": "all",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device_class": "power",
            "state_class": "measurement",
            "unit_of_measurement": "W",
            "suggested_display_precision": 1,
            "device": {"identifiers": ["meteremu_grid"], "name": "grid", "manufacturer": "meteremu",
                       "model": "envoy meter", "sw_version": config["device"]["sw_version"]},
            "origin": {"name": "meteremu", "sw_version": config["origin"]["sw_version"]},
        })

    def test_energy_and_power_factor_configs(self):
        values = dict((p.key, p) for p, _ in reading_values(three_phase(), EnergyCounters(3)))
        energy = self.layout.config(self.meter, values["total_import_energy"])
        self.assertEqual((energy["device_class"], energy["state_class"], energy["unit_of_measurement"]),
                         ("energy", "total_increasing", "Wh"))
        self.assertEqual(energy["name"], "Import energy")
        pf = self.layout.config(self.meter, values["b_pf"])
        self.assertEqual((pf["device_class"], pf["state_class"]), ("power_factor", "measurement"))
        self.assertNotIn("unit_of_measurement", pf)
        for key, cls, unit in (("c_voltage", "voltage", "V"), ("a_current", "current", "A"),
                               ("a_freq", "frequency", "Hz"), ("total_aprt_power", "apparent_power", "VA")):
            config = self.layout.config(self.meter, values[key])
            self.assertEqual((config["device_class"], config["unit_of_measurement"]), (cls, unit), key)
        qos = Layout("meters", "homeassistant", "meteremu", qos=1).config(self.meter, values["a_pf"])
        self.assertEqual(qos["qos"], 1)


class ChangeTests(SynchronousTestCase):
    def test_only_changed_values(self):
        tracker = ChangeTracker()
        self.assertEqual(tracker.changes({"a": "1", "b": "2"}, 0.0), [("a", "1"), ("b", "2")])
        self.assertEqual(tracker.changes({"a": "1", "b": "3"}, 1.0), [("b", "3")])
        self.assertEqual(tracker.changes({"a": "1", "b": "3"}, 2.0), [])
        self.assertEqual(tracker.changes({"a": "1", "b": "3"}, 3.0, force=True), [("a", "1"), ("b", "3")])
        tracker.forget("a")
        self.assertEqual(tracker.changes({"a": "1", "b": "3"}, 4.0), [("a", "1")])

    def test_refresh_interval_republishes_unchanged_values(self):
        tracker = ChangeTracker()
        tracker.changes({"a": "1"}, 0.0, refresh=60.0)
        self.assertEqual(tracker.changes({"a": "1"}, 59.0, refresh=60.0), [])
        self.assertEqual(tracker.changes({"a": "1"}, 60.0, refresh=60.0), [("a", "1")])

    def test_rate_limit(self):
        limit = RateLimit(5.0)
        self.assertEqual(limit.delay(100.0), 0.0)
        limit.mark(100.0)
        self.assertEqual(limit.delay(101.0), 4.0)
        self.assertEqual(limit.delay(106.0), 0.0)

    def test_backoff_doubles_with_jitter_and_is_capped(self):
        self.assertEqual(backoff_delay(0, 1.0, 60.0, lambda: 1.0), 1.0)
        self.assertEqual(backoff_delay(0, 1.0, 60.0, lambda: 0.0), 0.5)
        self.assertEqual(backoff_delay(3, 1.0, 60.0, lambda: 1.0), 8.0)
        self.assertEqual(backoff_delay(10, 1.0, 60.0, lambda: 1.0), 60.0)
        self.assertEqual(backoff_delay(1000, 1.0, 60.0, lambda: 0.0), 30.0)


class ClientTests(SynchronousTestCase):
    def test_paho_never_opens_a_socket_itself(self):
        import paho.mqtt.client as mqtt

        from meteremu.compat.paho import client_class

        client = client_class()(mqtt.CallbackAPIVersion.VERSION2, client_id="x")
        client.connect_async("127.0.0.1", 1)
        with self.assertRaises(ConnectionError):
            client.reconnect()  # would block in socket.create_connection without the override
        self.assertIsNone(client.socket())

    def test_settings_hide_the_password(self):
        from meteremu.mqttclient import BrokerSettings

        settings = BrokerSettings("broker", 1883, "id", username="u", password="hunter2")
        self.assertNotIn("hunter2", repr(settings))
        self.assertEqual(settings.address, "mqtt://broker:1883")

    def test_bad_tls_files_name_the_key_and_file(self):
        from meteremu.mqttclient import MQTTConfigError, client_tls

        with self.assertRaises(MQTTConfigError) as caught:
            client_tls(TLSOptions(certfile="/nonexistent/client.pem"), "broker")
        self.assertIn("tls.certfile", str(caught.exception))
        self.assertIn("/nonexistent/client.pem", str(caught.exception))
        creator = client_tls(TLSOptions(insecure=True), "broker")
        self.assertEqual(creator.policy.mode, "none")  # neither the certificate nor the host name is checked


class OptionTests(SynchronousTestCase):
    def parse(self, **mqtt: Any) -> Options:
        config = parse_config({"exporters": {"mqtt": mqtt}, "devices": []}, "(test)", env={"PW": "s3cret"})
        return config.exporters.others["mqtt"]

    def error(self, **mqtt: Any) -> ConfigError:
        with self.assertRaises(ConfigError) as caught:
            self.parse(**mqtt)
        return caught.exception

    def test_defaults(self):
        options = self.parse()
        self.assertEqual((options.host, options.port, options.topic_prefix, options.qos, options.retain),
                         ("localhost", 1883, "meters", 0, True))
        self.assertEqual((options.discovery, options.discovery_prefix, options.ha_birth_topic),
                         (False, "homeassistant", "homeassistant/status"))
        self.assertEqual((options.min_interval, options.mqtt_client_id), (5.0, "meteremu-meteremu"))
        self.assertIs(options.tls, False)

    def test_full(self):
        options = self.parse(host="broker.lan", port=8883, username="meteremu", password="${PW}",
                             tls={"ca_file": "/etc/ssl/ca.pem", "insecure": False}, qos=1, retain=False,
                             min_interval="500ms", discovery=True, discovery_prefix="ha",
                             birth_topic="hass/status", node_id="house-2", json_state=True)
        self.assertEqual(options.password, "s3cret")
        self.assertNotIn("s3cret", repr(options))
        self.assertEqual(options.tls, TLSOptions(ca_file="/etc/ssl/ca.pem"))
        self.assertEqual((options.qos, options.min_interval, options.ha_birth_topic), (1, 0.5, "hass/status"))
        self.assertIs(self.parse(tls=True).tls, True)

    def test_disabled_section_builds_no_exporter(self):
        config = parse_config({"exporters": {"mqtt": {"enabled": False}}, "devices": []}, "(test)", env={})
        self.assertNotIn("mqtt", config.exporters.others)

    def test_errors_name_the_key(self):
        cases = [
            ({"port": 0}, "exporters.mqtt.port", "1-65535"),
            ({"qos": 3}, "exporters.mqtt.qos", "one of 0, 1, 2"),
            ({"topic_prefix": "meters/#"}, "exporters.mqtt.topic_prefix", "wildcards"),
            ({"topic_prefix": "meters/"}, "exporters.mqtt.topic_prefix", "empty levels"),
            ({"discovery_prefix": ""}, "exporters.mqtt.discovery_prefix", "non-empty"),
            ({"node_id": "my node"}, "exporters.mqtt.node_id", "letters, digits"),
            ({"password": "x"}, "exporters.mqtt.password", "username"),
            ({"keepalive": "1s"}, "exporters.mqtt.keepalive", "5s"),
            ({"reconnect_delay": "10s", "reconnect_max_delay": "5s"}, "exporters.mqtt.reconnect_max_delay",
             "reconnect_delay"),
            ({"tls": {"keyfile": "k.pem"}}, "exporters.mqtt.tls.keyfile", "certfile"),
            ({"tls": {"cafile": "x"}}, "exporters.mqtt.tls.cafile", "ca_file"),
            ({"min_interval": "soon"}, "exporters.mqtt.min_interval", "duration"),
            ({"hots": "x"}, "exporters.mqtt.hots", "host"),
        ]
        for body, key, why in cases:
            error = self.error(**body)
            self.assertEqual(error.key, key, body)
            self.assertIn(why, error.why, body)
        self.assertNotIn("x", self.error(password="x").why.replace("expected", ""))
