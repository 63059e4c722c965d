"""Tasmota source (``type: tasmota``), the pure parts: options, field names and paths, the
Status 10 / SENSOR JSON of real SML scripts (tests/fixtures/tasmota), refusals."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, load_meter_file, parse_config
from meteremu.sources.jsonfields import DocumentError, ValueProblem
from meteremu.sources.tasmota.parse import PasswordRefused, read_sensor
from meteremu.sources.tasmota.source import status_url
from tests.support import FIXTURES, ROOT

PHASES = {"a_power": "power_l1", "b_power": "power_l2", "c_power": "power_l3",
          "a_voltage": "voltage_l1", "b_voltage": "voltage_l2", "c_voltage": "voltage_l3",
          "a_current": "current_l1", "b_current": "current_l2", "c_current": "current_l3",
          "frequency": "Frequenz", "energy_import": {"field": "Total_in", "unit": "kWh"},
          "energy_export": {"field": "Total_out", "unit": "kWh"}}


def parse(**source: Any) -> Any:
    data = {"meters": {"m": {"source": {"type": "tasmota", **source}}}, "devices": []}
    return parse_config(data, "t.yaml", env={}).meters["m"].source.options


def capture(name: str) -> bytes:
    with open(os.path.join(FIXTURES, "tasmota", name), "rb") as handle:
        return handle.read()


class OptionsTests(SynchronousTestCase):
    def test_defaults_per_mode(self) -> None:
        options = parse(host="192.168.1.70", values={"power": "Power_curr"}, password="wp-1")
        self.assertEqual((options.mode, options.interval, options.username), ("http", 1.0, "admin"))
        self.assertNotIn("wp-1", repr(options))
        options = parse(mode="mqtt", topic="tasmota_8C4F2A", broker={"host": "127.0.0.1"},
                        values={"power": "Power_curr"})
        self.assertEqual(options.interval, 10.0)  # the TelePeriod: stale_after defaults to 30 s
        self.assertEqual((options.sensor_topic, options.lwt_topic),
                         ("tele/tasmota_8C4F2A/SENSOR", "tele/tasmota_8C4F2A/LWT"))

    def test_errors(self) -> None:
        power = {"power": "Power_curr"}
        cases = [
            ({"values": power}, "host"),
            ({"host": "http://x/", "values": power}, "host"),
            ({"host": "x", "values": {}}, "values.power"),
            ({"host": "x", "values": {"power": "$.a["}}, "values.power"),
            ({"host": "x", "values": {"power": "it's"}}, "values.power"),
            ({"host": "x", "values": {"power": {"field": "P", "unit": "V"}}}, "values.power.unit"),
            ({"host": "x", "topic": "t", "values": power}, "topic"),
            ({"mode": "mqtt", "values": power, "broker": {"host": "b"}}, "topic"),
            ({"mode": "mqtt", "topic": "a/+", "values": power, "broker": {"host": "b"}}, "topic"),
            ({"mode": "mqtt", "topic": "t", "values": power}, "broker"),
            ({"mode": "mqtt", "topic": "t", "values": power, "broker": {"host": "b", "password": "p"}},
             "broker.password"),
            ({"mode": "mqtt", "topic": "t", "host": "x", "values": power, "broker": {"host": "b"}}, "host"),
            ({"host": "x", "values": power, "interval": 0}, "interval"),
            ({"host": "x", "values": {"power": "P", "energy_import": "Total_in"}}, "values.energy_import"),
            ({"host": "x", "values": {"power": "P", "energy_export": {"field": "Total_out"}}}, "values.energy_export"),
        ]
        for source, key in cases:
            with self.assertRaises(ConfigError, msg=source) as caught:
                parse(**source)
            self.assertEqual(caught.exception.key, f"meters.m.source.{key}", source)

    def test_the_example_file_parses(self) -> None:
        meter = load_meter_file(os.path.join(ROOT, "etc", "examples", "tasmota.yaml"), env={"MQTT_PASSWORD": "p"})
        self.assertEqual(meter.source.options.mode, "mqtt")

    def test_status_url(self) -> None:
        self.assertEqual(status_url(parse(host="192.168.1.70", values={"power": "P"})),
                         "http://192.168.1.70/cm?cmnd=Status%2010")
        self.assertEqual(status_url(parse(host="t.local:8080", password="a&b c", values={"power": "P"})),
                         "http://t.local:8080/cm?user=admin&password=a%26b+c&cmnd=Status%2010")


class CaptureTests(SynchronousTestCase):
    def test_three_phases_by_field_name(self) -> None:
        extraction = parse(host="x", values=PHASES).extraction()
        reading = read_sensor(extraction, capture("status10_sml_3phase.json"), 5.0)
        self.assertEqual(reading.powers(), (60.0, -111.0, 14.0))
        self.assertEqual([p.voltage for p in reading.phases], [235.3, 235.7, 235.7])
        self.assertEqual(reading.phases[0].freq, 49.9)
        self.assertEqual(reading.energy[0], (2687368.7, 582456.9))
        self.assertEqual(reading.measured_at, 5.0)

    def test_the_sensor_message_reads_the_same(self) -> None:
        extraction = parse(host="x", values=PHASES).extraction()
        self.assertEqual(read_sensor(extraction, capture("sensor_sml_3phase.json"), 5.0),
                         read_sensor(extraction, capture("status10_sml_3phase.json"), 5.0))

    def test_total_by_path_next_to_other_sensors(self) -> None:
        extraction = parse(host="x", values={"power": "$.SML.Power_curr",
                                             "energy_import": {"field": "$.SML.Total_in", "unit": "kWh"}}
                           ).extraction()
        reading = read_sensor(extraction, capture("status10_sml_htu21_gas.json"), 5.0)
        self.assertEqual(reading.powers(), (-894.0,))
        self.assertEqual(reading.energy, ((34507476.1, 0.0),))

    def test_power_monitoring_channels(self) -> None:
        extraction = parse(host="x", values={"power": "$.ENERGY.Power[0]", "a_voltage": "Voltage"}).extraction()
        self.assertEqual(read_sensor(extraction, capture("status10_energy_2ch.json"), 5.0).powers(), (8.15,))

    def test_refusals(self) -> None:
        extraction = parse(host="x", values={"power": "Power_curr",
                                             "energy_import": {"field": "Total_in", "unit": "kWh"}}).extraction()
        with self.assertRaises(PasswordRefused):
            read_sensor(extraction, b'{"WARNING":"Need user=<username>&password=<password>"}', 1.0)
        with self.assertRaises(ValueProblem) as caught:
            read_sensor(extraction, b'{"StatusSNS":{"SML":{"Power_curr":12}}}'.replace(b"12", b"null"), 1.0)
        self.assertIn("power (Power_curr) is null", str(caught.exception))
        with self.assertRaises(ValueProblem) as caught:  # two meters in one script, both named so
            read_sensor(extraction, b'{"A":{"Power_curr":1},"B":{"Power_curr":2}}', 1.0)
        self.assertIn("selects 2 values", str(caught.exception))
        for body in (b"[]", b'{"StatusSNS": 5}', b"<html>"):
            with self.assertRaises(DocumentError):
                read_sensor(extraction, body, 1.0)
