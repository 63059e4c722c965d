"""InfluxDB exporter: line protocol, points, daily summaries, writes and retries.

Pure parts are table-driven; the write path is tested against a loopback
HTTP server that records the exact requests (v1 and v2 bytes, retries, 413
splits), against Debian's influxd 1.6 (written data is queried back), and
against VictoriaMetrics for the v2 API. Time for the flush timer, back-off and
midnight is a ``task.Clock``; HTTP runs on the real reactor, every wait bounded.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError
from meteremu.days import DayStart, local_date, midnight, next_midnight, take_day_start
from meteremu.exporters.influxdb import Options, make_exporter
from meteremu.exporters.influxdb.lineprotocol import (
    LineProtocolError,
    escape_key,
    escape_measurement,
    format_lines,
    format_point,
    format_timestamp,
    format_value,
    quote_string,
)
from meteremu.exporters.influxdb.points import Point, daily_points, reading_points
from meteremu.exporters.influxdb.service import InfluxExporter, Sink
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.reading import PhaseReading, Reading
from tests.support import test_config
from tests.support.shared.influxdb import (
    MAR30_2200,
    MAR31_0000,
    PASSWORD,
    TOKEN,
    set_counters,
    three_phase,
)

AMS = ZoneInfo("Europe/Amsterdam")


OCT27_0000 = 1729980000.0  # 2024-10-27 00:00 CEST, a 25-hour day


class LineProtocolTests(SynchronousTestCase):
    def test_spec_examples(self):
        # sources-sinks.md §5.1, "Examples (computed)".
        self.assertEqual(escape_measurement("p1 meter,x"), r"p1\ meter\,x")
        self.assertEqual(escape_key("Living room=1"), r"Living\ room\=1")
        self.assertEqual(quote_string('He said "hi" \\ ok'), r'"He said \"hi\" \\ ok"')

    def test_escaping_per_element(self):
        # measurement: comma and space only; '=' stays as it is
        self.assertEqual(escape_measurement("a=b c,d"), r"a=b\ c\,d")
        # tag keys, tag values and field keys: comma, equals sign, space
        self.assertEqual(escape_key('a=b c,d"e'), r'a\=b\ c\,d"e')
        # newlines are never allowed: replaced by a (then escaped) space
        self.assertEqual(escape_key("two\nlines\r"), r"two\ lines\ ")
        self.assertEqual(quote_string("two\nlines"), '"two lines"')
        # a literal backslash passes, unless it would escape a delimiter
        self.assertEqual(escape_key(r"a\b"), r"a\b")
        self.assertEqual(escape_key("trail\\"), "trail/")
        self.assertEqual(escape_key(r"x\,y"), r"x/\,y")
        self.assertEqual(escape_measurement("m\\"), "m/")

    def test_field_types(self):
        cases = [(True, "true"), (False, "false"), (5, "5i"), (-7, "-7i"), (1.5, "1.5"), (1.0, "1.0"),
                 (-1.2e78, "-1.2e+78"), (1e-07, "1e-07"), ("x", '"x"'), ("", '""'),
                 (math.nan, None), (math.inf, None), (-math.inf, None)]
        for value, expected in cases:
            self.assertEqual(format_value(value), expected, value)
        self.assertRaises(LineProtocolError, format_value, b"bytes")

    def test_format_point(self):
        line = format_point("smart meter", {"z": "last", "a": "first, one", "empty": ""},
                            {"power_w": 12.5, "n": 3, "ok": True, "s": 'say "hi"', "bad": math.nan},
                            1_700_000_000.25, "ms")
        self.assertEqual(line, r'smart\ meter,a=first\,\ one,z=last power_w=12.5,n=3i,ok=true,s="say \"hi\"" '
                               "1700000000250")

    def test_point_without_representable_fields_is_skipped(self):
        self.assertIsNone(format_point("m", {"t": "1"}, {"a": math.nan, "b": math.inf}, 1.0))
        self.assertIsNone(format_point("m", {}, {}, 1.0))

    def test_point_without_timestamp(self):
        self.assertEqual(format_point("m", {}, {"v": 1.0}), "m v=1.0")

    def test_empty_measurement_is_an_error(self):
        self.assertRaises(LineProtocolError, format_point, "", {}, {"v": 1.0})
        self.assertRaises(LineProtocolError, format_point, "\n", {}, {"v": 1.0})

    def test_timestamps_are_exact_in_every_precision(self):
        t = 1_700_000_000.123456
        self.assertEqual(format_timestamp(t, "s"), 1_700_000_000)
        self.assertEqual(format_timestamp(t, "ms"), 1_700_000_000_123)
        self.assertEqual(format_timestamp(t, "us"), 1_700_000_000_123_456)
        self.assertEqual(format_timestamp(1_700_000_000.5, "ns"), 1_700_000_000_500_000_000)
        self.assertEqual(format_timestamp(0.0015, "ms"), 2)  # the float is a hair above 0.0015
        self.assertRaises(LineProtocolError, format_timestamp, 1.0, "m")
        self.assertRaises(LineProtocolError, format_timestamp, math.nan, "s")

    def test_body(self):
        self.assertEqual(format_lines(["a v=1", "b,t=ü v=2"]), "a v=1\nb,t=ü v=2\n".encode())
        self.assertEqual(format_lines([]), b"")


class PointsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.meter = Meter("grid", self.clock, source_type="envoy")
        set_counters(self.meter, (1000.0, 10.0), (2000.0, 20.0), (3000.0, 30.0))

    def test_smart_meter_per_phase_and_total(self):
        reading = three_phase(1_700_000_000.0)
        start = ((900.0, 10.0), (2000.0, 15.0), (2500.0, 30.0))
        points = reading_points(self.meter, reading, start)
        self.assertEqual([p.tags["phase"] for p in points], ["a", "b", "c", "total"])
        a = points[0]
        self.assertEqual(a.measurement, "smart_meter")
        self.assertEqual(dict(a.tags), {"meter": "grid", "phase": "a", "meter_type": "envoy"})
        self.assertEqual(a.fields["power_w"], 1200.0)
        self.assertEqual((a.fields["import_wh"], a.fields["export_wh"]), (1000.0, 10.0))
        self.assertAlmostEqual(a.fields["daily_import_kwh"], 0.1)
        self.assertEqual(a.fields["daily_export_kwh"], 0.0)
        # envoy-logger's per-line fields: S = P / pf here, Q = sqrt(S² - P²)
        self.assertEqual(a.fields["P"], 1200.0)
        self.assertAlmostEqual(a.fields["S"], 1200.0 / 0.9)
        self.assertAlmostEqual(a.fields["Q"], math.sqrt((1200 / 0.9) ** 2 - 1200 ** 2))
        self.assertAlmostEqual(a.fields["I_rms"], 1200.0 / 0.9 / 230.0)
        self.assertEqual(a.fields["V_rms"], 230.0)
        self.assertEqual(points[1].fields["power_w"], -300.5)
        total = points[3]
        self.assertEqual(set(total.fields), {"power_w", "import_wh", "export_wh", "daily_import_kwh",
                                             "daily_export_kwh"})
        self.assertAlmostEqual(total.fields["power_w"], 1200.0 - 300.5 + 45.25)
        self.assertEqual((total.fields["import_wh"], total.fields["export_wh"]), (6000.0, 60.0))
        self.assertAlmostEqual(total.fields["daily_import_kwh"], 0.6)
        self.assertAlmostEqual(total.fields["daily_export_kwh"], 0.005)
        self.assertEqual(total.time, 1_700_000_000.0)

    def test_exact_line(self):
        reading = Reading(phases=(PhaseReading(230.0, 2.0, 400.0, 460.0, 0.87, 50.0),), measured_at=1_700_000_000.5)
        meter = Meter("garage one", self.clock, source_type="shelly")
        set_counters(meter, (1.5, 0.25), (0.0, 0.0), (0.0, 0.0))
        lines = [p.line("ms") for p in reading_points(meter, reading)]
        self.assertEqual(lines, [
            r"smart_meter,meter=garage\ one,meter_type=shelly,phase=a power_w=400.0,import_wh=1.5,export_wh=0.25,"
            f"P=400.0,Q={math.sqrt(460.0 ** 2 - 400.0 ** 2)!r},S=460.0,I_rms=2.0,V_rms=230.0 1700000000500",
            r"smart_meter,meter=garage\ one,meter_type=shelly,phase=total power_w=400.0,import_wh=1.5,"
            "export_wh=0.25 1700000000500",
        ])

    def test_line_fields_only_when_the_source_measured_the_line(self):
        reading = Reading(phases=(PhaseReading(0.0, 0.0, 500.0, 0.0, 0.0, 0.0),), measured_at=1.0)
        (phase, _total) = reading_points(self.meter, reading)
        self.assertEqual(set(phase.fields), {"power_w", "import_wh", "export_wh"})

    def test_reading_without_phases(self):
        reading = Reading(phases=(), measured_at=5.0, extras={"gas": 1234.5})
        points = reading_points(self.meter, reading)
        self.assertEqual([(p.measurement, dict(p.tags), dict(p.fields)) for p in points],
                         [("smart_meter_value", {"meter": "grid", "name": "gas"}, {"value": 1234.5})])

    def test_inverters_with_configured_tags(self):
        self.meter.extra_labels = {
            "inverter.121900001": {"array": "east", "row": 1, "meter": "not-me", "_x": "no"},
            "inverter.121900002": {"array": "west"},
        }
        reading = three_phase(10.0, extras={"inverter.121900001": 231.0, "inverter.121900002": 0.0,
                                            "inverter.121900003": math.nan})
        inverters = [p for p in reading_points(self.meter, reading) if p.measurement == "inverter"]
        self.assertEqual([(dict(p.tags), dict(p.fields)) for p in inverters], [
            ({"meter": "grid", "serial": "121900001", "array": "east", "row": "1"}, {"power_w": 231.0}),
            ({"meter": "grid", "serial": "121900002", "array": "west"}, {"power_w": 0.0}),
        ])

    def test_circuits_with_percentage_of_total(self):
        reading = three_phase(10.0, powers=(1000.0, 500.0, 500.0),
                              extras={"circuit.HVAC": 980.0, "circuit.Living Room": 300.0, "pv_power": 0.0})
        points = reading_points(self.meter, reading)
        circuits = [(dict(p.tags), dict(p.fields)) for p in points if p.measurement == "smart_meter_circuit"]
        self.assertEqual(circuits, [
            ({"meter": "grid", "circuit_name": "HVAC"}, {"power_w": 980.0, "percentage": 49.0}),
            ({"meter": "grid", "circuit_name": "Living Room"}, {"power_w": 300.0, "percentage": 15.0}),
        ])
        (other,) = [p for p in points if p.measurement == "smart_meter_value"]
        self.assertEqual(dict(other.tags), {"meter": "grid", "name": "pv_power"})
        # exporting: no meaningful share of a negative total
        exporting = three_phase(11.0, powers=(-1000.0, 0.0, 0.0), extras={"circuit.HVAC": 980.0})
        (circuit,) = [p for p in reading_points(self.meter, exporting) if p.measurement == "smart_meter_circuit"]
        self.assertEqual(dict(circuit.fields), {"power_w": 980.0})

    def test_days_in_a_zone_with_dst(self):
        self.assertEqual(local_date(MAR31_0000 - 1, AMS), date(2024, 3, 30))
        self.assertEqual(local_date(MAR31_0000, AMS), date(2024, 3, 31))
        self.assertEqual(midnight(date(2024, 3, 31), AMS), MAR31_0000)
        self.assertEqual(next_midnight(MAR31_0000, AMS) - MAR31_0000, 23 * 3600)
        self.assertEqual(next_midnight(OCT27_0000 + 1, AMS) - OCT27_0000, 25 * 3600)
        self.assertEqual(next_midnight(MAR30_2200, AMS), MAR31_0000)
        # midnight that does not exist (Santiago jumps 00:00 → 01:00): the first instant after the gap
        santiago = ZoneInfo("America/Santiago")
        start = midnight(date(2024, 9, 8), santiago)
        self.assertEqual(local_date(start, santiago), date(2024, 9, 8))
        self.assertEqual(local_date(start - 1, santiago), date(2024, 9, 7))

    def test_day_start_snapshot(self):
        counters = ((1.0, 2.0), (3.0, 4.0), (5.0, 6.0))
        at_midnight = take_day_start(MAR31_0000 + 30, counters, AMS)
        self.assertEqual((at_midnight.day, at_midnight.complete), (date(2024, 3, 31), True))
        later = take_day_start(MAR31_0000 + 3600, counters, AMS)
        self.assertFalse(later.complete)
        self.assertEqual(DayStart.from_dict(later.to_dict()), later)
        for bad in (None, "x", {}, {"day": "2024-13-01", "at": 1, "counters": []},
                    {"day": "2024-03-31", "at": 1, "counters": [[1]]},
                    {"day": "2024-03-31", "at": 1, "counters": [["nan", 1]]}):
            self.assertIsNone(DayStart.from_dict(bad), bad)

    def test_daily_points(self):
        start = DayStart(date(2024, 3, 31), MAR31_0000, ((100.0, 10.0), (200.0, 0.0), (0.0, 50.0)), True)
        end = ((1100.0, 10.0), (250.0, 400.0), (0.0, 50.0))
        points = daily_points("grid", "envoy", start, end, True, AMS)
        self.assertEqual([p.tags["phase"] for p in points], ["a", "b", "c", "total"])
        for p in points:
            self.assertEqual(p.measurement, "smart_meter_daily")
            self.assertEqual(p.time, MAR31_0000)
            self.assertEqual(p.tags["interval"], "1d")
        self.assertEqual(dict(points[1].fields), {"import_wh": 50.0, "export_wh": 400.0, "net_wh": -350.0,
                                                  "complete": True})
        self.assertEqual(dict(points[3].fields), {"import_wh": 1050.0, "export_wh": 400.0, "net_wh": 650.0,
                                                  "complete": True})
        # a counter that went backwards (lost state) never gives negative energy
        backwards = daily_points("grid", "envoy", start, ((0.0, 0.0),) * 3, False, AMS)
        self.assertEqual(backwards[3].fields["import_wh"], 0.0)


class OptionsTests(SynchronousTestCase):
    def parse(self, **influx: Any) -> Any:
        return test_config(self.mktemp(), exporters={"influxdb": influx}).exporters.others.get("influxdb")

    def test_defaults(self):
        options = self.parse()
        self.assertEqual(options, Options())
        self.assertEqual((options.api, options.database, options.batch_size, options.flush_interval,
                          options.buffer_limit, options.timeout, options.precision),
                         ("v1", "meteremu", 1000, 5.0, 10000, 5.0, "ms"))

    def test_full(self):
        options = self.parse(url="https://influx.lan:8086/prefix/", api="v2", org="home", bucket="meters",
                             token="t", low_rate_bucket="daily", batch_size=50, flush_interval="2s",
                             buffer_limit=500, timezone="Europe/Amsterdam", precision="s")
        self.assertEqual((options.flush_interval, options.bucket, options.low_rate_bucket), (2.0, "meters", "daily"))

    def test_disabled(self):
        self.assertIsNone(self.parse(enabled=False))

    def test_errors(self):
        cases = [
            ({"url": "localhost:8086"}, "exporters.influxdb.url"),
            ({"api": "v3"}, "exporters.influxdb.api"),
            ({"batch_size": 0}, "exporters.influxdb.batch_size"),
            ({"batch_size": 100, "buffer_limit": 10}, "exporters.influxdb.buffer_limit"),
            ({"password": "x"}, "exporters.influxdb.username"),
            ({"timezone": "Mars/Olympus"}, "exporters.influxdb.timezone"),
            ({"flush_interval": 0}, "exporters.influxdb.flush_interval"),
            ({"batchsize": 1}, "exporters.influxdb.batchsize"),
        ]
        for data, key in cases:
            with self.assertRaises(ConfigError, msg=data) as caught:
                self.parse(**data)
            self.assertEqual(caught.exception.key, key)

    def test_secrets_never_in_repr_or_errors(self):
        options = Options(username="u", password=PASSWORD, token=TOKEN)
        self.assertNotIn(PASSWORD, repr(options))
        self.assertNotIn(TOKEN, repr(options))
        for url in (f"http://u:{PASSWORD}@db:8086", f"u:{PASSWORD}@db:8086"):
            with self.assertRaises(ConfigError) as caught:
                self.parse(url=url)
            self.assertNotIn(PASSWORD, str(caught.exception))


class MakeExporterTests(SynchronousTestCase):
    def test_registry_contract(self):
        meters = MeterSet()
        exporter = make_exporter(Options(), meters, Clock(), None, None)
        self.assertIsInstance(exporter, InfluxExporter)
        self.assertFalse(hasattr(exporter, "ready"))  # an unreachable database never fails the start
        self.assertIsInstance(exporter.high, Sink)
        self.assertIsInstance(Point("m", {}, {"v": 1.0}, 0.0).line(), str)
