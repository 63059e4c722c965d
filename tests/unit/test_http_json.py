"""HTTP JSON source (``type: http_json``), the pure parts: options, JSONPath values, units,
checks, Readings, on real Fronius Solar API answers (tests/fixtures/http_json)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, parse_config
from meteremu.sources.http_json.source import auth_headers, sample_time
from meteremu.sources.httpoptions import shown_url
from meteremu.sources.jsonfields import (
    DocumentError,
    PathError,
    ValueProblem,
    compile_path,
    decode_document,
    name_path,
    read_document,
)

FRONIUS = ("http_json", "fronius_smart_meter_63a_device_0.json")
FRONIUS_SYMO = ("http_json", "fronius_symo_device_0_pyfronius.json")
D = "$.Body.Data."


def parse(**source: Any) -> Any:
    data = {"meters": {"m": {"source": {"type": "http_json", "url": "http://192.168.1.60/api", **source}}},
            "devices": []}
    return parse_config(data, "t.yaml", env={}).meters["m"].source.options


def document(*parts: str) -> Any:
    with open(fixture_path(*parts), "rb") as handle:
        return decode_document(handle.read())


def fixture_path(*parts: str) -> str:
    import os

    from tests.support import FIXTURES
    return os.path.join(FIXTURES, *parts)


class OptionsTests(SynchronousTestCase):
    def test_defaults_and_secrets_kept_out_of_repr(self) -> None:
        options = parse(values={"power": f"{D}PowerReal_P_Sum"}, username="admin", password="s3cret",
                        headers={"X-Key": "k3y"})
        self.assertEqual((options.method, options.interval, options.timeout), ("GET", 1.0, 5.0))
        self.assertNotIn("s3cret", repr(options))
        self.assertNotIn("k3y", repr(options))

    def test_errors(self) -> None:
        power = {"power": "$.p"}
        cases = [
            ({"values": {}}, "values.power"),
            ({"values": {"power": "$.a["}}, "values.power"),
            ({"values": {"power": "$.p", "a_power": "$.a"}}, "values.power"),
            ({"values": {"power": {"path": "$.p", "unit": "kWh"}}}, "values.power.unit"),
            ({"values": {"power": {"path": "$.p", "scale": 0}}}, "values.power.scale"),
            ({"values": power, "url": "ftp://x/"}, "url"),
            ({"values": power, "url": "http://user:pw@x/"}, "url"),
            ({"values": power, "password": "p"}, "username"),
            ({"values": power, "username": "u", "token": "t"}, "token"),
            ({"values": power, "verify_ssl": False}, "verify_ssl"),
            ({"values": power, "url": "https://x/", "tls_fingerprint": "ab"}, "tls_fingerprint"),
            ({"values": power, "url": "https://x/", "tls_fingerprint": "ab" * 32, "verify_ssl": False},
             "verify_ssl"),
            ({"values": power, "url": "https://x/", "ca_file": "/nonexistent.pem"}, "ca_file"),
            ({"values": power, "body": "{}"}, "body"),
            ({"values": power, "headers": {"Bad Name": "x"}}, "headers"),
            ({"values": power, "token": "t", "headers": {"Authorization": "x"}}, "headers"),
            ({"values": power, "timestamp_path": "$$"}, "timestamp_path"),
            ({"values": power, "interval": 0}, "interval"),
            ({"values": power, "max_power": 0}, "max_power"),
        ]
        for source, key in cases:
            with self.assertRaises(ConfigError, msg=source) as caught:
                parse(**source)
            self.assertEqual(caught.exception.key, f"meters.m.source.{key}", source)

    def test_the_example_file_parses(self) -> None:
        import os

        from meteremu.config import load_meter_file
        from tests.support import ROOT
        meter = load_meter_file(os.path.join(ROOT, "etc", "examples", "http_json.yaml"), env={})
        self.assertEqual(meter.source.type, "http_json")

    def test_shown_url_leaves_out_the_query(self) -> None:
        self.assertEqual(shown_url("http://t/cm?user=admin&password=x"), "http://t/cm?…")
        self.assertEqual(shown_url("https://t:8443/a"), "https://t:8443/a")

    def test_auth_headers(self) -> None:
        self.assertEqual(auth_headers("admin", "pw", None), {"Authorization": "Basic YWRtaW46cHc="})
        self.assertEqual(auth_headers(None, None, "tok"), {"Authorization": "Bearer tok"})
        self.assertEqual(auth_headers(None, None, None), {})


class PathTests(SynchronousTestCase):
    def test_jsonpath_forms(self) -> None:
        doc = decode_document(b'{"a": {"b": [1, 2, 3]}, "1.8.0": 5, "items": [{"n": "p", "v": 7}]}')
        for text, expected in [("$.a.b[0]", [1]), ("$.a.b[-1]", [3]), ("$['1.8.0']", [5]),
                               ("a.b[1]", [2]), ("$.items[?(@.n=='p')].v", [7]), ("$..v", [7])]:
            self.assertEqual(compile_path(text).find(doc), [Decimal(v) for v in expected], text)

    def test_bad_paths_are_errors_that_say_why(self) -> None:
        for text in ("", " ", "$.a[", "$$", "x" * 2000):
            with self.assertRaises(PathError, msg=text):
                compile_path(text)

    def test_name_path_finds_a_field_anywhere(self) -> None:
        doc = decode_document(b'{"Time": "t", "SML": {"Power_curr": 12, "Total_in": 3.5}}')
        self.assertEqual(name_path("Power_curr").find(doc), [Decimal(12)])
        with self.assertRaises(PathError):
            name_path("it's")


class FroniusTests(SynchronousTestCase):
    """The Fronius Smart Meter 63A answer, read per phase and as a total."""

    def test_per_phase_with_counters(self) -> None:
        options = parse(values={
            "a_power": f"{D}PowerReal_P_Phase_1", "b_power": f"{D}PowerReal_P_Phase_2",
            "c_power": f"{D}PowerReal_P_Phase_3", "a_voltage": f"{D}Voltage_AC_Phase_1",
            "a_current": f"{D}Current_AC_Phase_1", "frequency": f"{D}Frequency_Phase_Average",
            "energy_import": f"{D}EnergyReal_WAC_Sum_Consumed",
            "energy_export": f"{D}EnergyReal_WAC_Sum_Produced"})
        reading = read_document(options.extraction(), document(*FRONIUS), 1.0)
        self.assertEqual(reading.powers(), (1765.55, 1515.8, 2311.22))
        self.assertEqual(reading.phases[0].voltage, 228.6)
        self.assertAlmostEqual(reading.phases[0].current, 7.755)
        self.assertEqual(reading.phases[1].voltage, 230.0)  # not configured: nominal
        self.assertEqual(reading.energy, ((15303334.0, 35623065.0), (0.0, 0.0), (0.0, 0.0)))
        self.assertEqual(reading.measured_at, 1.0)

    def test_total_in_kw_with_invert(self) -> None:
        options = parse(values={"power": {"path": f"{D}PowerReal_P_Sum", "unit": "kW", "scale": 0.001}},
                        invert=True)
        reading = read_document(options.extraction(), document(*FRONIUS), 1.0)
        self.assertAlmostEqual(reading.total_act_power, -5592.57)

    def test_older_symo_answer_without_phases(self) -> None:
        options = parse(values={"power": f"{D}PowerReal_P_Sum"})
        reading = read_document(options.extraction(), document(*FRONIUS_SYMO), 1.0)
        self.assertEqual(reading.powers(), (-367.722145,))
        self.assertIsNone(reading.energy)

    def test_meter_timestamp(self) -> None:
        options = parse(values={"power": f"{D}PowerReal_P_Sum"}, timestamp_path=f"{D}TimeStamp")
        self.assertEqual(sample_time(document(*FRONIUS), options, 2e9), 1633977078.0)
        options = parse(values={"power": f"{D}PowerReal_P_Sum"}, timestamp_path="$.Head.Timestamp")
        self.assertEqual(sample_time(document(*FRONIUS), options, 2e9), 1633977078.0)
        with self.assertRaises(ValueProblem):  # ahead of this host's clock
            sample_time(document(*FRONIUS), options, 1.0)
        options = parse(values={"power": f"{D}PowerReal_P_Sum"}, timestamp_path="$.nope")
        with self.assertRaises(ValueProblem):
            sample_time(document(*FRONIUS), options, 2e9)


class RefusedTests(SynchronousTestCase):
    """Whatever is wrong is refused with the reason; never a made-up value."""

    def read(self, body: Any, **values: Any) -> Any:
        options = parse(values=values or {"power": "$.p"})
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return read_document(options.extraction(), decode_document(raw), 1.0)

    def test_units_written_in_the_answer_win(self) -> None:
        self.assertEqual(self.read({"p": "1.5 kW"}).total_act_power, 1500.0)
        self.assertEqual(self.read({"p": {"value": 2, "unit": "kW"}}).total_act_power, 2000.0)
        self.assertEqual(self.read({"p": {"value": 367.5, "unit": "W"}}).total_act_power, 367.5)
        reading = self.read({"p": 1, "e": {"value": 3, "unit": "kWh"}}, power="$.p", energy_import="$.e")
        self.assertEqual(reading.energy, ((3000.0, 0.0),))

    def test_problems(self) -> None:
        cases = [
            ({"q": 1}, "is not in the answer"),
            ({"p": None}, "is null"),
            ({"p": "abc"}, "is not a number"),
            ({"p": True}, "is not a number"),
            ({"p": [1]}, "array is not a number"),
            ({"p": "3 furlongs"}, "unknown power unit"),
            ({"p": 150000}, "beyond max_power"),
            ({"p": "1e400"}, "out of range"),
            ({"p": "NaN"}, "not a finite number"),
        ]
        for body, text in cases:
            with self.assertRaises(ValueProblem, msg=body) as caught:
                self.read(body)
            self.assertIn(text, str(caught.exception), body)
        with self.assertRaises(ValueProblem) as caught:
            self.read({"a": {"p": 1}, "b": {"p": 2}}, power="$..p")
        self.assertIn("selects 2 values", str(caught.exception))
        with self.assertRaises(ValueProblem) as caught:
            self.read({"p": 1, "e": -5}, power="$.p", energy_import="$.e")
        self.assertIn("negative", str(caught.exception))
        with self.assertRaises(ValueProblem):
            self.read({"p": 1, "v": 5000}, power="$.p", a_voltage="$.v")

    def test_optional_values_may_be_missing(self) -> None:
        reading = self.read({"p": 10}, power="$.p", a_voltage="$.v", energy_import="$.e")
        self.assertEqual(reading.phases[0].voltage, 230.0)
        self.assertIsNone(reading.energy)

    def test_documents_that_are_not_json(self) -> None:
        for raw in (b"", b"<html>", b'{"p": NaN}', b"\xff\xfe", b"[" * 100000, b"{" + b" " * (1 << 20) + b"}"):
            with self.assertRaises(DocumentError, msg=raw[:10]):
                decode_document(raw)
