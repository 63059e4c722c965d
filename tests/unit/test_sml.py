"""SML decoding (meteremu.sources.smlparse, smllib underneath) on real meters' frames, and the
Tibber Pulse options."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, parse_config
from meteremu.sources.jsonfields import ValueProblem
from meteremu.sources.smlparse import SmlError, obis_name, read_sml, values_of
from tests.support.sml import sml_frame

EBZ = "ebz_per_phase_power.hex"


class FrameTests(SynchronousTestCase):
    def test_per_phase_power_and_counters(self) -> None:
        sml = read_sml(sml_frame(EBZ))
        self.assertEqual(sml.values["power"], 352.89)
        reading = sml.reading(7.0)
        self.assertEqual(reading.powers(), (82.26, 27.06, 243.57))  # per phase wins over the total
        self.assertAlmostEqual(reading.total_act_power, 352.89)
        self.assertEqual(reading.energy[0], (450091.89911, 2198.0))
        self.assertEqual(reading.measured_at, 7.0)
        self.assertEqual(sml.reading(7.0, invert=True).powers(), (-82.26, -27.06, -243.57))

    def test_total_power_with_voltages_and_currents(self) -> None:
        sml = read_sml(sml_frame("hly_total_power_voltages.hex"))
        self.assertEqual(sml.meter_id, "0a01484c5902000424a0")
        reading = sml.reading(1.0)
        self.assertEqual(reading.powers(), (137.0, 0.0, 0.0))
        self.assertEqual([p.voltage for p in reading.phases], [234.4, 234.5, 233.8])
        self.assertEqual(reading.phases[0].freq, 50.0)
        self.assertEqual(reading.energy[0], (4499896.2, 0.0))

    def test_counters_only_is_refused_with_the_reason(self) -> None:
        for name in ("dzg_1_8_0_only.hex", "issue26_1_17_0_only.hex"):
            sml = read_sml(sml_frame(name))
            with self.assertRaises(ValueProblem) as caught:
                sml.reading(1.0)
            self.assertIn("PIN", str(caught.exception))

    def test_noise(self) -> None:
        frame = sml_frame(EBZ)
        for name in ("noise_issue15.hex", "noise_issue28_1.hex"):
            with self.assertRaises(SmlError):
                read_sml(sml_frame(name))
        damaged = frame[:100] + bytes([frame[100] ^ 0xFF]) + frame[101:]
        cases = [b"", b"garbage", frame[:-10], damaged, b"\x1b\x1b\x1b\x1b\x01\x01\x01\x01" * 3]
        for data in cases:
            with self.assertRaises(SmlError, msg=data[:20]):
                read_sml(data)
        # Noise around a whole frame is skipped; of two frames the newer one counts.
        later = sml_frame("ebz_per_phase_power_2.hex")
        self.assertEqual(read_sml(b"\x00noise" + frame + b"\xff\x1b").values["power"], 352.89)
        self.assertEqual(read_sml(frame + later).values["power"], 1156.07)

    def test_values_checked(self) -> None:
        with self.assertRaises(ValueProblem) as caught:
            values_of([("0100100700ff", 5, 30, 0)])
        self.assertIn("unit code 30 where 27 was expected", str(caught.exception))
        with self.assertRaises(ValueProblem):
            values_of([("0100100700ff", 10**9, 27, 0)])
        with self.assertRaises(ValueProblem):
            values_of([("0100010800ff", -5, 30, 0)])
        with self.assertRaises(ValueProblem):
            values_of([("0100100700ff", "x", 27, 0)])
        with self.assertRaises(ValueProblem):
            values_of([("0100100700ff", 5, 27, 99)])
        self.assertEqual(values_of([("0100100700ff", 12345, 27, -2)]).values, {"power": 123.45})
        self.assertEqual(obis_name("0100100700ff"), "1-0:16.7.0*255")


def tibber(**source: Any) -> Any:
    data = {"meters": {"m": {"source": {"type": "tibber_pulse", **source}}}, "devices": []}
    return parse_config(data, "t.yaml", env={}).meters["m"].source.options


class TibberOptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        options = tibber(host="192.168.1.80", password="AbCd-1234")
        self.assertEqual((options.interval, options.timeout, options.node_id), (2.0, 5.0, 1))
        self.assertEqual(options.url(), "http://192.168.1.80/data.json?node_id=1")
        self.assertNotIn("AbCd-1234", repr(options))
        self.assertEqual(tibber(host="b:8080", node_id=2).url(), "http://b:8080/data.json?node_id=2")

    def test_errors(self) -> None:
        for source, key in [({"host": "http://b/"}, "host"), ({"host": "b", "node_id": 300}, "node_id"),
                            ({"host": "b", "timeout": 0}, "timeout")]:
            with self.assertRaises(ConfigError, msg=source) as caught:
                tibber(**source)
            self.assertEqual(caught.exception.key, f"meters.m.source.{key}")


class SmllibMissingTests(SynchronousTestCase):
    """smllib (GPL-3.0) is an extra: without it the SML source types are refused with what to install."""

    def test_refused_naming_the_extra(self) -> None:
        import sys

        self.patch(sys, "modules", {**sys.modules, "smllib": None})  # how Python marks a module absent
        with self.assertRaises(ConfigError) as caught:
            tibber(host="192.168.1.80")
        self.assertEqual(caught.exception.key, "meters.m.source.host")
        self.assertIn("meteremu[sml]", str(caught.exception))
        data = {"meters": {"m": {"source": {"type": "sml", "tcp": "192.168.1.20:2001"}}}, "devices": []}
        with self.assertRaises(ConfigError) as caught:
            parse_config(data, "t.yaml", env={})
        self.assertEqual(caught.exception.key, "meters.m.source.tcp")
