"""MQTT input source (``type: mqtt``): pure parts, a Clock-driven service, a real mosquitto.

Pure parts (JSON paths, payload values, units, timestamps, the Combiner that
turns messages into Readings, the options) are checked synchronously and
table-driven. The service is driven with a fake client and a ``Clock`` for
freshness, debounce and expiry, then against a real mosquitto per test
(``tests.support.mosquitto``; paho on its own thread publishes), and end to
end: a value published to the broker shows up in a Shelly's UDP and HTTP
``EM.GetStatus``. Every wait is a Deferred with a timeout.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from decimal import Decimal
from fractions import Fraction
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

import meteremu.sources
from meteremu.config import ConfigError, load_meter_file, parse_config
from meteremu.meter import Freshness, Meter
from meteremu.reading import Reading
from meteremu.sources.mqtt import Options, Value
from meteremu.sources.mqtt.mapping import (
    MAX_PAYLOAD,
    UNAVAILABLE,
    UNKNOWN,
    Combiner,
    Path,
    PathError,
    Payload,
    SampleError,
    Smoother,
    convert,
    layout_from_options,
    parse_path,
    parse_time,
    sample,
)
from tests.support import HTTPClient, asyncio_reactor_skip, start_app, test_config
from tests.support.mosquitto import Mosquitto, Subscriber, free_port, mosquitto_skip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = 1_700_000_000.0
WAIT = 10.0
SKIP = asyncio_reactor_skip() or mosquitto_skip()


def register(case: Any) -> None:
    """Make ``type: mqtt`` known to the config (the registry dict is read live)."""
    modules = meteremu.sources.SOURCE_MODULES
    if "mqtt" not in modules:
        modules["mqtt"] = "meteremu.sources.mqtt"
        case.addCleanup(modules.pop, "mqtt", None)


def options(case: Any, **source: Any) -> Options:
    register(case)
    config = parse_config({"meters": {"grid": {"source": {"type": "mqtt", **source}}}, "devices": []},
                          "(test)", env={"PW": "s3cret-pw"})
    return config.meters["grid"].source.options


def combiner(case: Any, **source: Any) -> Combiner:
    opts = options(case, **source)
    smoothing = opts.smoothing
    return Combiner(layout_from_options(opts),
                    Smoother(smoothing.window, smoothing.alpha) if smoothing else None,
                    expire_after=opts.expire_after)


# -- JSON paths ------------------------------------------------------------------------


DOC = {"SML": {"Power": 123, "in.out": 7, "list": [10, 20, 30]},
       "Body": {"Data": [{"P": 1}, {"P": 2}]}, "0": "zero-key",
       "deep": {"a": {"power": 5}, "b": {"power": 6}}, "power": None}


class PathTests(SynchronousTestCase):
    def test_reads(self) -> None:
        cases = [
            ("$", DOC),
            ("$.SML.Power", 123),
            ("SML.Power", 123),
            ("$['SML']['Power']", 123),
            ('$["SML"]["in.out"]', 7),
            ("$.SML.list[0]", 10),
            ("$.SML.list[-1]", 30),
            ("$.SML.list.2", 30),
            ("SML.list.1", 20),
            ("$.Body.Data[1].P", 2),
            ("$.Body.Data.0.P", 1),
            ("Body.Data.0.P", 1),
            ("$.0", "zero-key"),  # digits on an object: a key
            ("$.deep..power", 5),  # the first in document order
            ("$..Power", 123),
            ("$..P", 1),
            ("$.Total Power", 3),
            ("  $.SML.Power  ", 123),
            ("$[ 'SML' ][ 'list' ][ 1 ]", 20),
            ("$['it\\'s']", "quoted"),
        ]
        doc = {**DOC, "it's": "quoted", "Total Power": 3}
        for text, want in cases:
            self.assertEqual(parse_path(text).find(doc), doc if want is DOC else want, text)

    def test_missing(self) -> None:
        for text in ("$.nope", "$.SML.list[3]", "$.SML.list[-4]", "$.SML.Power.x", "$.SML[0]",
                     "$.Body.Data.5.P", "$..nothing", "$.SML.list.x"):
            with self.assertRaises(KeyError, msg=text):
                parse_path(text).find(DOC)
        self.assertIsNone(parse_path("$.power").find(DOC))  # present, null

    def test_rejected(self) -> None:
        for text in ("", "   ", "$.", "$..", "$a", "$.a[?(@.x>1)]", "$.a[*]", "$.*", "$..*", "$.a[1:2]",
                     "$.a['b", "$.a[b]", "[0]", ".a", "$.a]"):
            with self.assertRaises(PathError, msg=text):
                parse_path(text)

    def test_deep_documents_do_not_recurse(self) -> None:
        doc: Any = {"x": 1}
        for _ in range(5000):
            doc = {"n": doc}
        self.assertEqual(parse_path("$..x").find(doc), 1)
        self.assertIsInstance(parse_path("$.a"), Path)


# -- payload values -----------------------------------------------------------------------


def value(data: bytes, path: str | None = None) -> Any:
    return sample(Payload(data), parse_path(path) if path else None)


class PayloadTests(SynchronousTestCase):
    def test_plain_and_json_numbers(self) -> None:
        cases = [
            (b"230.4", None, (Decimal("230.4"), None)),
            (b" -1500 \n", None, (Decimal("-1500"), None)),
            (b"+.5", None, (Decimal(".5"), None)),
            (b"1e3", None, (Decimal("1e3"), None)),
            (b"230.4 V", None, (Decimal("230.4"), "V")),
            (b"1.5kW", None, (Decimal("1.5"), "kW")),
            (b'"42.5"', None, (Decimal("42.5"), None)),
            (b'{"a": {"b": [1, 2.25]}}', "$.a.b[1]", (Decimal("2.25"), None)),
            (b'{"a": "7.5 kW"}', "$.a", (Decimal("7.5"), "kW")),
            (b'{"a": 0.1}', "$.a", (Decimal("0.1"), None)),  # exact, not 0.1000000000000000055
        ]
        for data, path, want in cases:
            self.assertEqual(value(data, path), want, data)

    def test_no_sample_and_unavailable(self) -> None:
        for data, path in ((b"", None), (b"  ", None), (b"unknown", None), (b"null", None), (b"None", None),
                           (b'{"a": null}', "$.a"), (b'{"b": 1}', "$.a"), (b'"unknown"', None)):
            self.assertIs(value(data, path), UNKNOWN, data)
        for data, path in ((b"unavailable", None), (b'{"a": "unavailable"}', "$.a")):
            self.assertIs(value(data, path), UNAVAILABLE, data)

    def test_rejected(self) -> None:
        cases = [
            (b"abc", None, "is not a number"),
            (b"12,5", None, "is not a number"),
            (b'{"a": 1}', None, "set path"),
            (b"[1, 2]", None, "set path"),
            (b"\xff\xfe", None, "not UTF-8"),
            (b"12 W", "$.a", "not JSON"),
            (b'{"a": true}', "$.a", "true is not a number"),
            (b'{"a": {"b": 1}}', "$.a", "object is not a number"),
            (b'{"a": [1]}', "$.a", "array is not a number"),
            (b'{"a": NaN}', "$.a", "not JSON"),
            (b'{"a": Infinity}', "$.a", "not JSON"),
            (b"[" * 100000, "$.a", "not JSON"),
            (b" " * (MAX_PAYLOAD + 1), None, "larger than"),
            (b"1" * (MAX_PAYLOAD + 1), "$.a", "larger than"),
        ]
        for data, path, why in cases:
            with self.assertRaises(SampleError, msg=data[:20]) as caught:
                value(data, path)
            self.assertIn(why, str(caught.exception), data[:20])

    def test_units(self) -> None:
        one = Fraction(1)
        self.assertEqual(convert((Decimal("1.5"), None), "power", "kW", one), 1500.0)
        self.assertEqual(convert((Decimal("1.5"), "kW"), "power", "W", one), 1500.0)  # written unit wins
        self.assertEqual(convert((Decimal("0.0036"), None), "energy", "GJ", one), 1000.0)  # exact
        self.assertEqual(convert((Decimal("12345.678"), None), "energy", "kWh", one), 12345678.0)
        self.assertEqual(convert((Decimal("95"), None), "power_factor", "%", one), 0.95)
        self.assertEqual(convert((Decimal("500"), None), "current", "mA", one), 0.5)
        self.assertEqual(convert((Decimal("100"), None), "power", "W", Fraction(-2)), -200.0)
        with self.assertRaises(SampleError) as caught:
            convert((Decimal("1"), "furlongs"), "power", "W", one)
        self.assertIn("unknown power unit 'furlongs'", str(caught.exception))
        with self.assertRaises(SampleError):
            convert((Decimal("NaN"), None), "power", "W", one)
        started = time.monotonic()
        for huge in ("1e999999999", "-1e-999999999", "1e31"):
            with self.assertRaises(SampleError, msg=huge) as caught:
                convert((Decimal(huge), None), "power", "W", one)
            self.assertIn("out of range", str(caught.exception))
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(convert((Decimal("0e999999999"), None), "power", "W", one), 0.0)
        self.assertEqual(convert((Decimal("1e30"), None), "power", "mW", one), 1e27)

    def test_times(self) -> None:
        self.assertEqual(parse_time(Decimal("1700000000")), 1_700_000_000.0)
        self.assertEqual(parse_time(1_700_000_000_500), 1_700_000_000.5)  # milliseconds
        self.assertEqual(parse_time("1700000000.25"), 1_700_000_000.25)
        self.assertEqual(parse_time("2023-11-14T22:13:20Z"), T0)
        self.assertEqual(parse_time("2023-11-14T23:13:20+01:00"), T0)
        naive = parse_time("2023-11-14T22:13:20")
        self.assertEqual(naive, time.mktime(time.strptime("2023-11-14T22:13:20", "%Y-%m-%dT%H:%M:%S")))
        for bad in (None, True, "soon", "", -5, 0, {"t": 1}, Decimal("NaN"), Decimal("1e999999999"),
                    "0001-01-01T00:00:00-14:00", "1969-12-31T00:00:00Z"):
            self.assertIsNone(parse_time(bad), bad)


# -- options -----------------------------------------------------------------------------


class OptionTests(SynchronousTestCase):
    def error(self, **source: Any) -> ConfigError:
        with self.assertRaises(ConfigError) as caught:
            options(self, **source)
        return caught.exception

    def test_defaults_and_shorthands(self) -> None:
        o = options(self, topic="tele/x/SENSOR", values={"power": "$.SML.Power", "a_voltage": "volts/a"})
        self.assertEqual((o.host, o.port, o.qos, o.keepalive, o.tls, o.client_id), ("localhost", 1883, 0, 30.0,
                                                                                     False, None))
        self.assertEqual((o.payload_available, o.payload_not_available, o.debounce, o.expire_after),
                         ("online", "offline", 0.0, 0.0))
        layout = layout_from_options(o)
        self.assertEqual([(s.key, s.topic, s.path.text if s.path else None, s.unit) for s in layout.specs],
                         [("power", "tele/x/SENSOR", "$.SML.Power", "W"), ("a_voltage", "volts/a", None, "V")])
        self.assertEqual(layout.topics(), ["tele/x/SENSOR", "volts/a"])

    def test_full(self) -> None:
        o = options(self, host="broker.lan", port=8883, username="meteremu", password="${PW}",
                    tls={"ca_file": "/etc/ssl/ca.pem"}, qos=1, topic="t", timestamp_path="$.Time",
                    availability_topic="t/LWT", availability_path="$.state", payload_available="Online",
                    payload_not_available="Offline", invert=True, smoothing={"alpha": 0.5},
                    debounce="50ms", expire_after="30s", keepalive="10s",
                    values={"a_power": {"topic": "p/a", "unit": "kW", "scale": 2, "invert": True},
                            "b_power": "p/b", "c_power": {"topic": "p/c", "path": "a.b.0"},
                            "energy_import": [{"path": "$.t1", "unit": "kWh"}, {"path": "$.t2", "unit": "kWh"}],
                            "a_pf": {"topic": "pf/a", "unit": "%"}})
        self.assertEqual(o.password, "s3cret-pw")
        self.assertNotIn("s3cret-pw", repr(o))
        self.assertEqual(o.values.a_power, Value(topic="p/a", unit="kW", scale=2.0, invert=True))
        self.assertEqual(len(o.values.energy_import), 2)
        layout = layout_from_options(o)
        specs = {(s.key, s.index): s for s in layout.specs}
        self.assertEqual(specs[("a_power", 0)].factor, Fraction(-2))
        self.assertEqual(specs[("energy_import", 1)].topic, "t")
        self.assertEqual(layout.topics(), ["p/a", "p/b", "p/c", "pf/a", "t", "t/LWT"])
        described = json.dumps(layout.describe())
        self.assertIn('"energy_import": [', described)
        self.assertEqual(o.debounce, 0.05)

    def test_errors_name_the_key(self) -> None:
        power = {"power": "grid/power"}
        cases = [
            ({"values": {}}, "values.power", "a power value"),
            ({}, "values", "required key is missing"),
            ({"values": {"power": "a", "a_power": "b"}}, "values.power", "not both"),
            ({"values": {"power_export": "x", "a_power": "b"}}, "values.power_export", "power as well"),
            ({"values": {"a_power": "a", "b_power_export": "x"}}, "values.b_power_export", "b_power as well"),
            ({"values": {"power": "grid/#"}}, "values.power", "wildcards"),
            ({"values": {"power": "$.a"}}, "values.power", "source's topic"),
            ({"values": {"power": {"path": "$.a"}}}, "values.power", "source's topic"),
            ({"topic": "t", "values": {"power": "$.a[*]"}}, "values.power", "not supported"),
            ({"values": {"power": {"topic": "t", "path": "$..", "unit": "W"}}}, "values.power.path", "name"),
            ({"values": {"power": {"topic": "t", "unit": "kWh"}}}, "values.power.unit", "a power unit"),
            ({"values": {**power, "a_pf": {"topic": "t", "unit": "W"}}}, "values.a_pf.unit", "power_factor"),
            ({"values": {**power, "energy_import": [{"topic": "t", "unit": "kW"}]}},
             "values.energy_import[0].unit", "energy unit"),
            ({"values": {**power, "energy_import": []}}, "values.energy_import", "at least one"),
            ({"values": {"power": {"topik": "t"}}}, "values.power.topik", "did you mean 'topic'"),
            ({"values": {"pwer": "t"}}, "values.pwer", "did you mean 'power'"),
            ({"values": {"power": {"topic": "t", "scale": "x"}}}, "values.power.scale", "number"),
            ({"values": {"power": [1]}}, "values.power", "expected a string or a mapping"),
            ({"values": power, "port": 0}, "port", "1-65535"),
            ({"values": power, "password": "x"}, "password", "username"),
            ({"values": power, "qos": 3}, "qos", "one of 0, 1, 2"),
            ({"values": power, "topic": "a/+/b"}, "topic", "wildcards"),
            ({"values": power, "availability_topic": ""}, "availability_topic", "non-empty"),
            ({"values": power, "availability_path": "$.state"}, "availability_path", "availability_topic"),
            ({"values": power, "timestamp_path": "$["}, "timestamp_path", "position"),
            ({"values": power, "payload_not_available": "ONLINE"}, "payload_not_available", "different"),
            ({"values": power, "keepalive": "1s"}, "keepalive", "5s"),
            ({"values": power, "reconnect_delay": "10s", "reconnect_max_delay": "5s"}, "reconnect_max_delay",
             "reconnect_delay"),
            ({"values": power, "debounce": "1m"}, "debounce", "at most 10s"),
            ({"values": power, "smoothing": {"window": 2, "alpha": 0.5}}, "smoothing.window", "exactly one"),
            ({"values": power, "tls": {"keyfile": "k.pem"}}, "tls.keyfile", "certfile"),
            ({"values": power, "hots": "x"}, "hots", "host"),
        ]
        for body, key, why in cases:
            error = self.error(**body)
            self.assertEqual(error.key, f"meters.grid.source.{key}", body)
            self.assertIn(why, error.why, body)
        error = self.error(values=power, username="u", password="${PW}", port=0)
        self.assertNotIn("s3cret-pw", str(error))

    def test_example_documents_every_option_and_loads(self) -> None:
        from meteremu.sources import option_types
        from tests.support.options import option_fields

        register(self)
        path = os.path.join(ROOT, "etc", "examples", "mqtt.yaml")
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        missing = [f"{cls.__name__}.{name}" for cls, name in option_fields([option_types()["mqtt"]])
                   if not re.search(rf"(?m)(^\s*(- )?|[{{,]\s*){name}:", text)]
        self.assertEqual(missing, [])
        meter = load_meter_file(path, env={"MQTT_PASSWORD": "p"})
        self.assertEqual(meter.source.type, "mqtt")
        self.assertEqual(meter.stale_after, 60.0)
        layout = layout_from_options(meter.source.options)
        self.assertEqual(layout.topics(), ["tele/smlreader/SENSOR", "tele/smlreader/LWT"])

    def test_lazy_import(self) -> None:
        """Validating a config does not load paho or the service (checked in a fresh interpreter)."""
        import subprocess
        import sys

        code = ("import sys, meteremu.sources as s; s.SOURCE_MODULES['mqtt'] = 'meteremu.sources.mqtt'\n"
                "from meteremu.config import load_meter_file\n"
                "load_meter_file('etc/examples/mqtt.yaml', env={'MQTT_PASSWORD': 'p'})\n"
                "print(sorted(m for m in sys.modules if m.startswith(('paho', 'meteremu.sources.mqtt.source',"
                " 'meteremu.sources.homeassistant', 'twisted.internet.reactor'))))")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
        self.assertEqual(out.stdout.strip(), "[]", out.stderr)


# -- the combiner --------------------------------------------------------------------------


class CombinerTests(SynchronousTestCase):
    def test_one_topic_per_phase(self) -> None:
        c = combiner(self, values={"a_power": "em/0/power", "b_power": "em/1/power", "c_power": "em/2/power",
                                   "a_voltage": "em/0/voltage"})
        out = c.message("em/0/power", b"100", False, T0)
        self.assertIsNone(out.reading)
        self.assertEqual(out.waiting, ["b_power (em/1/power)", "c_power (em/2/power)"])
        self.assertTrue(out.new)
        self.assertIsNone(c.message("em/1/power", b"-20.5", False, T0 + 0.1).reading)
        out = c.message("em/2/power", b"3", False, T0 + 0.2)
        self.assertEqual(out.reading.powers(), (100.0, -20.5, 3.0))
        self.assertEqual(out.reading.measured_at, T0 + 0.2)
        self.assertEqual(out.reading.phases[0].voltage, 230.0)  # not published yet: nominal
        out = c.message("em/0/voltage", b"231.5", False, T0 + 0.3)
        self.assertEqual(out.reading.phases[0].voltage, 231.5)
        out = c.message("em/0/power", b"100", False, T0 + 0.4)  # the same value again is a new sample
        self.assertEqual(out.reading.measured_at, T0 + 0.4)
        self.assertIsNone(c.message("unrelated", b"1", False, T0 + 1).reading)

    def test_one_json_topic_with_paths(self) -> None:
        c = combiner(self, topic="tele/sml/SENSOR",
                     values={"power": "$.SML.Power", "energy_import": {"path": "$.SML.Total_in", "unit": "kWh"},
                             "energy_export": {"path": "$.SML.Total_out", "unit": "kWh"}})
        payload = b'{"Time":"2023-11-14T22:13:20","SML":{"Total_in":1234.5,"Total_out":12.25,"Power":-350}}'
        out = c.message("tele/sml/SENSOR", payload, False, T0)
        reading = out.reading
        self.assertEqual(reading.powers(), (-350.0,))
        self.assertEqual(reading.energy, ((1234500.0, 12250.0),))
        self.assertEqual(reading.measured_at, T0)

    def test_export_value_and_sign(self) -> None:
        c = combiner(self, values={"power": "p/in", "power_export": {"topic": "p/out", "unit": "kW"}})
        c.message("p/in", b"0", False, T0)
        out = c.message("p/out", b"1.2", False, T0 + 1)
        self.assertEqual(out.reading.powers(), (-1200.0,))
        c = combiner(self, invert=True, values={"a_power": "a", "b_power": {"topic": "b", "invert": True},
                                                "c_power": {"topic": "c", "scale": 0.5}})
        for topic in "abc":
            out = c.message(topic, b"100", False, T0)
        self.assertEqual(out.reading.powers(), (-100.0, 100.0, -50.0))

    def test_three_phases_with_everything(self) -> None:
        values = {}
        for p in "abc":
            values.update({f"{p}_power": f"{p}/p", f"{p}_voltage": f"{p}/v", f"{p}_current": f"{p}/i",
                           f"{p}_pf": {"topic": f"{p}/pf", "unit": "%"}})
        c = combiner(self, values={**values, "frequency": "f"})
        for p, (power, volts, amps, pf) in zip("abc", ((2166.2, 227, 9.6, 99), (3.6, 230, 0.04, 36),
                                                       (-244, 230.2, 1.5, 72)), strict=True):
            c.message(f"{p}/v", str(volts).encode(), False, T0)
            c.message(f"{p}/i", str(amps).encode(), False, T0)
            c.message(f"{p}/pf", str(pf).encode(), False, T0)
            c.message("f", b"49.9", False, T0)
            out = c.message(f"{p}/p", str(power).encode(), False, T0)
        a, b, cc = out.reading.phases
        self.assertEqual((a.act_power, a.voltage, a.pf, a.freq), (2166.2, 227.0, 0.99, 49.9))
        self.assertAlmostEqual(a.current, 9.6)
        self.assertEqual(cc.pf, -0.72)
        self.assertAlmostEqual(b.aprt_power, 9.2)  # V x I
        self.assertEqual(out.reading.energy, None)

    def test_energy_tariffs_summed_on_phase_a(self) -> None:
        c = combiner(self, values={"a_power": "a", "b_power": "b", "energy_import": ["t1", "t2"]})
        c.message("a", b"1", False, T0)
        out = c.message("b", b"2", False, T0)
        self.assertIsNone(out.reading.energy)  # until every counter has a value
        c.message("t1", b"1000", False, T0)
        out = c.message("t2", b"500.5", False, T0)
        self.assertEqual(out.reading.energy, ((1500.5, 0.0), (0.0, 0.0)))

    def test_payload_timestamps_repeats_and_nudge(self) -> None:
        c = combiner(self, timestamp_path="$.ts", values={"a_power": {"topic": "a", "path": "$.p"},
                                                           "b_power": {"topic": "b", "path": "$.p"}})
        c.message("a", b'{"ts": 1700000000, "p": 1}', False, T0 + 5)
        out = c.message("b", b'{"ts": 1700000000, "p": 2}', False, T0 + 6)
        self.assertEqual(out.reading.measured_at, T0)  # the payload's time, not the arrival
        out = c.message("a", b'{"ts": 1700000000, "p": 3}', False, T0 + 7)
        self.assertIsNone(out.reading)  # the same sample again (by its timestamp)
        self.assertFalse(out.new)
        out = c.message("a", b'{"ts": 1699999999, "p": 3}', False, T0 + 7)  # the publisher's clock stepped back
        self.assertEqual((out.reading.measured_at, out.reading.powers()), (T0 + 0.001, (3.0, 2.0)))
        out = c.message("a", b'{"ts": "2023-11-14T22:13:21Z", "p": 4}', False, T0 + 8)
        self.assertEqual((out.reading.measured_at, out.reading.powers()), (T0 + 1, (4.0, 2.0)))
        out = c.message("b", b'{"ts": 1700000001000, "p": 5}', False, T0 + 9)  # same instant, in ms
        self.assertEqual(out.reading.measured_at, T0 + 1.001)  # nudged past the previous reading
        out = c.message("b", b'{"ts": "2099-01-01T00:00:00Z", "p": 5.5}', False, T0 + 10)  # a clock glitch
        self.assertEqual(out.reading.measured_at, T0 + 10)  # the arrival time: later samples stay new
        self.assertIn("ahead of this host's clock", out.warnings[0])
        out = c.message("b", b'{"ts": 1700000011, "p": 5.75}', False, T0 + 11)
        self.assertEqual((out.reading.measured_at, out.reading.powers()), (T0 + 11, (4.0, 5.75)))
        out = c.message("b", b'{"p": 6}', False, T0 + 50)  # no timestamp: the arrival time
        self.assertEqual(out.reading.measured_at, T0 + 50)
        out = c.message("b", b'{"ts": "yesterday", "p": 7}', False, T0 + 60)
        self.assertEqual(out.reading.measured_at, T0 + 60)
        self.assertEqual(out.warnings, ["b $.ts: 'yesterday' is not a time; sample ignored"])

    def test_retained_repeat_is_not_new(self) -> None:
        c = combiner(self, values={"power": "p"})
        self.assertEqual(c.message("p", b"100", True, T0).reading.total_act_power, 100.0)  # seeds
        out = c.message("p", b"100", True, T0 + 10)  # re-sent on a re-subscribe
        self.assertIsNone(out.reading)
        self.assertFalse(out.new)
        self.assertIsNotNone(c.message("p", b"100", False, T0 + 11).reading)  # published again: new
        self.assertIsNotNone(c.message("p", b"101", True, T0 + 12).reading)  # changed while we were away

    def test_unavailable_power_is_down_until_a_new_value(self) -> None:
        c = combiner(self, values={"a_power": "a", "b_power": "b", "a_voltage": "v"})
        c.message("a", b"1", False, T0)
        c.message("b", b"2", False, T0)
        out = c.message("a", b"unavailable", False, T0 + 1)
        self.assertEqual(out.down, "a_power (a) is unavailable")
        self.assertFalse(c.ready)
        out = c.message("b", b"3", False, T0 + 2)  # another value must not revive the meter
        self.assertEqual((out.reading, out.down), (None, "a_power (a) is unavailable"))
        out = c.message("a", b"unknown", False, T0 + 3)
        self.assertIsNone(out.reading)
        out = c.message("a", b"5", False, T0 + 4)
        self.assertEqual(out.reading.powers(), (5.0, 3.0))
        c.message("v", b"240", False, T0 + 5)
        out = c.message("v", b"unavailable", False, T0 + 6)  # auxiliary: left out, not down
        self.assertIsNone(out.down)
        self.assertEqual(out.reading.phases[0].voltage, 230.0)

    def test_bad_samples_warn_once_and_are_ignored(self) -> None:
        c = combiner(self, values={"power": "p"})
        out = c.message("p", b"garbage", False, T0)
        self.assertEqual(out.warnings, ["power (p): 'garbage' is not a number; sample ignored"])
        self.assertEqual(c.message("p", b"garbage", False, T0).warnings, [])
        self.assertEqual(c.message("p", b"12 kWh", False, T0).warnings,
                         ["power (p): unknown power unit 'kWh' in the payload; sample ignored"])
        self.assertEqual(c.message("p", b"1.5 kW", False, T0).reading.total_act_power, 1500.0)

    def test_availability_topic(self) -> None:
        c = combiner(self, availability_topic="dev/LWT", payload_available="Online",
                     payload_not_available="Offline", values={"power": "p"})
        self.assertEqual(c.message("dev/LWT", b"Online", True, T0).down, None)
        c.message("p", b"100", False, T0)
        out = c.message("dev/LWT", b"offline", False, T0 + 1)  # no case
        self.assertEqual(out.down, "dev/LWT says 'offline'")
        self.assertFalse(c.ready)
        out = c.message("p", b"150", False, T0 + 2)  # held while offline: neither served nor down again
        self.assertEqual((out.reading, out.down), (None, None))
        out = c.message("dev/LWT", b"ONLINE", False, T0 + 3)
        self.assertTrue(out.up)
        self.assertEqual((out.reading.total_act_power, out.reading.measured_at), (150.0, T0 + 2))
        c.message("dev/LWT", b"offline", False, T0 + 4)
        out = c.message("dev/LWT", b"online", False, T0 + 5)
        self.assertTrue(out.up)
        self.assertIsNone(out.reading)  # nothing new meanwhile: the source calls the meter alive
        out = c.message("dev/LWT", b"restarting", False, T0 + 6)
        self.assertEqual(out.warnings, ["availability topic dev/LWT: 'restarting' is neither 'Online' "
                                        "nor 'Offline'; sample ignored"])

    def test_availability_json_and_shared_topic(self) -> None:
        c = combiner(self, topic="z2m/meter", availability_topic="z2m/meter", availability_path="$.state",
                     values={"power": "$.power"})
        out = c.message("z2m/meter", b'{"state": "online", "power": 5}', False, T0)
        self.assertEqual(out.reading.total_act_power, 5.0)
        out = c.message("z2m/meter", b'{"state": "offline", "power": 6}', False, T0 + 1)
        self.assertEqual((out.down, out.reading), ("z2m/meter says 'offline'", None))
        c = combiner(self, availability_topic="s/online", payload_available="true", payload_not_available="false",
                     availability_path="$.ok", values={"power": "p"})
        c.message("p", b"1", False, T0)
        self.assertIsNotNone(c.message("s/online", b'{"ok": false}', False, T0).down)
        self.assertTrue(c.message("s/online", b'{"ok": true}', False, T0).up)

    def test_expire_after(self) -> None:
        c = combiner(self, expire_after="10s", values={"a_power": "a", "b_power": "b"})
        c.message("a", b"1", False, T0)
        c.message("b", b"2", False, T0 + 5)
        self.assertTrue(c.healthy(T0 + 10))
        self.assertIsNone(c.expiry(T0 + 10))
        self.assertEqual(c.expiry(T0 + 10.5), "no new sample of a_power (a) for over 10 s (expire_after)")
        self.assertFalse(c.healthy(T0 + 10.5))
        out = c.message("b", b"3", False, T0 + 11)  # a fresh b does not make a stale a fresh
        self.assertEqual((out.reading, out.down), (None, c.expiry(T0 + 11)))
        out = c.message("a", b"4", False, T0 + 12)
        self.assertEqual(out.reading.powers(), (4.0, 3.0))

    def test_smoothing(self) -> None:
        c = combiner(self, smoothing={"window": 2}, values={"power": "p", "a_voltage": "v"})
        self.assertEqual(c.message("p", b"100", False, T0).reading.total_act_power, 100.0)
        self.assertEqual(c.message("p", b"200", False, T0 + 1).reading.total_act_power, 150.0)
        self.assertEqual(c.message("v", b"240", False, T0 + 2).reading.phases[0].voltage, 240.0)  # not power
        c = combiner(self, smoothing={"alpha": 0.5}, values={"power": "p"})
        c.message("p", b"100", False, T0)
        self.assertEqual(c.message("p", b"0", False, T0 + 1).reading.total_act_power, 50.0)


# -- the service with a fake client and a Clock -------------------------------------------


class FakeClient:
    """Stands in for ReactorMQTTClient: records what the source asks, lets the test call back."""

    instances: list[FakeClient] = []

    def __init__(self, settings: Any, reactor: Any, **callbacks: Any) -> None:
        self.settings, self.reactor, self.callbacks = settings, reactor, callbacks
        self.subscriptions: list[tuple[str, int]] = []
        self.connected = False
        self.started = self.stopped = False
        FakeClient.instances.append(self)

    def subscribe(self, topic: str, qos: int = 0) -> None:
        self.subscriptions.append((topic, qos))

    def start(self) -> None:
        self.started = True

    def stop(self) -> Deferred[None]:
        self.stopped = True
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def connect(self) -> None:
        self.connected = True
        self.callbacks["on_attempt"](True, None)
        self.callbacks["on_connected"]()

    def lose(self, reason: str = "connection lost") -> None:
        self.connected = False
        self.callbacks["on_disconnected"](reason)

    def refuse(self) -> None:
        self.callbacks["on_attempt"](False, "broker refused the connection: Not authorized")

    def message(self, topic: str, payload: bytes | str, retained: bool = False) -> None:
        self.callbacks["on_message"](topic, payload.encode() if isinstance(payload, str) else payload, retained)


class LogCapture:
    def __init__(self, case: TestCase | SynchronousTestCase) -> None:
        self.texts: list[str] = []
        globalLogPublisher.addObserver(self.observe)
        case.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event: dict[str, Any]) -> None:
        self.texts.append(formatEvent(event) or "")
        if event.get("log_failure") is not None:
            self.texts.append(str(event["log_failure"].getTraceback()))

    def text(self) -> str:
        return "\n".join(self.texts)


class ServiceTests(SynchronousTestCase):
    def start(self, **source: Any) -> Any:
        from meteremu.sources.mqtt.source import MQTTSource

        source.setdefault("values", {"power": "grid/power"})
        self.clock = Clock()
        self.clock.advance(T0)
        self.meter = Meter("grid", self.clock, stale_after=60.0, source_type="mqtt")
        self.readings: list[Reading] = []
        self.meter.add_listener(lambda m, r: self.readings.append(r))
        FakeClient.instances = []
        self.source = MQTTSource(self.meter, options(self, **source), self.clock, client_factory=FakeClient)
        self.source.startService()
        self.addCleanup(lambda: self.source.running and self.source.stopService())
        self.client = FakeClient.instances[0] if FakeClient.instances else None
        return self.source

    def test_subscriptions_settings_and_details(self) -> None:
        self.start(host="broker.lan", port=1884, username="u", password="${PW}", qos=1, keepalive="15s",
                   availability_topic="dev/LWT", values={"a_power": "a", "b_power": "b"})
        self.assertEqual(self.client.subscriptions, [("a", 1), ("b", 1), ("dev/LWT", 1)])
        s = self.client.settings
        self.assertEqual((s.host, s.port, s.username, s.password, s.keepalive), ("broker.lan", 1884, "u",
                                                                                 "s3cret-pw", 15))
        self.assertRegex(s.client_id, r"^meteremu-grid-[0-9a-f]{8}$")
        self.assertTrue(self.client.started)
        details = json.dumps(self.meter.details)
        self.assertIn('"broker": "mqtt://broker.lan:1884"', details)
        self.assertIn('"connection": "connecting"', details)
        self.assertNotIn("s3cret-pw", details)
        self.assertNotIn("s3cret-pw", repr(s))
        self.source.stopService()
        self.assertTrue(self.client.stopped)
        self.assertEqual(self.meter.details["connection"], "stopped")

    def test_fresh_while_connected_stale_when_lost(self) -> None:
        self.start()
        self.client.connect()
        self.assertEqual(self.meter.freshness(), Freshness.STALE)  # no value yet
        self.client.message("grid/power", "512", retained=True)
        self.assertEqual(self.readings[-1].total_act_power, 512.0)
        self.assertEqual(self.readings[-1].measured_at, T0)
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        self.clock.pump([1.0] * 300)  # a steady value nobody re-publishes: fresh while connected
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        self.assertEqual(len(self.readings), 1)
        self.client.lose("connection lost (keepalive timeout)")
        self.assertEqual(self.meter.stats.last_error, "MQTT connection lost (keepalive timeout)")
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)  # a soft failure
        self.clock.pump([1.0] * 61)
        self.assertEqual(self.meter.freshness(), Freshness.STALE)
        self.client.connect()
        self.client.message("grid/power", "512", retained=True)  # the broker re-sends it: not new
        self.assertEqual(len(self.readings), 1)
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)  # but the connection is alive again

    def test_refused_login_is_down(self) -> None:
        self.start(username="u", password="${PW}")
        self.client.refuse()
        self.assertEqual(self.meter.freshness(), Freshness.DOWN)
        self.assertIn("broker refused the connection", self.meter.down_reason)
        self.assertNotIn("s3cret-pw", self.meter.down_reason)
        self.client.callbacks["on_attempt"](False, "Connection refused")  # TCP: soft
        self.assertEqual(self.meter.stats.failures, 2)

    def test_availability_and_unavailable(self) -> None:
        self.start(availability_topic="dev/LWT")
        self.client.connect()
        self.client.message("grid/power", "100")
        self.client.message("dev/LWT", "offline", retained=True)
        self.assertEqual(self.meter.freshness(), Freshness.DOWN)
        self.assertEqual(self.meter.down_reason, "dev/LWT says 'offline'")
        self.clock.advance(5)
        self.assertEqual(self.meter.freshness(), Freshness.DOWN)  # no heartbeat revives it
        self.client.message("dev/LWT", "online")
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        self.assertEqual(len(self.readings), 1)
        self.client.message("grid/power", "unavailable")
        self.assertEqual(self.meter.down_reason, "power (grid/power) is unavailable")
        self.clock.advance(5)
        self.assertEqual(self.meter.freshness(), Freshness.DOWN)
        self.client.message("grid/power", "90")
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)

    def test_debounce_serves_a_burst_once(self) -> None:
        self.start(debounce="50ms", values={"a_power": "a", "b_power": "b", "c_power": "c"})
        self.client.connect()
        for topic in "abc":
            self.client.message(topic, "1")
        self.assertEqual(self.readings, [])
        self.clock.advance(0.05)
        self.assertEqual([r.powers() for r in self.readings], [(1.0, 1.0, 1.0)])
        for i, topic in enumerate("abc"):
            self.client.message(topic, str(10 + i))
            self.clock.advance(0.01)
        self.clock.advance(0.05)
        self.assertEqual([r.powers() for r in self.readings][1:], [(10.0, 11.0, 12.0)])
        self.client.message("a", "20")
        self.client.message("b", "unavailable")  # down inside the window: the pending reading is dropped
        self.clock.advance(0.1)
        self.assertEqual(len(self.readings), 2)
        self.assertEqual(self.meter.freshness(), Freshness.DOWN)

    def test_expire_after_marks_down(self) -> None:
        self.start(expire_after="10s")
        self.client.connect()
        self.client.message("grid/power", "100")
        self.clock.pump([1.0] * 10)
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        self.clock.pump([1.0] * 2)
        self.assertEqual(self.meter.freshness(), Freshness.DOWN)
        self.assertIn("expire_after", self.meter.down_reason)
        failures = self.meter.stats.failures
        self.clock.pump([1.0] * 5)
        self.assertEqual(self.meter.stats.failures, failures)  # reported once
        self.client.message("grid/power", "100")
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)

    def test_bad_tls_file_is_down_without_connecting(self) -> None:
        logs = LogCapture(self)
        self.start(tls={"ca_file": "/nonexistent/ca.pem"})
        self.assertIsNone(self.client)
        self.assertEqual(self.meter.freshness(), Freshness.DOWN)
        self.assertIn("source.tls.ca_file: cannot load CA certificates from /nonexistent/ca.pem",
                      self.meter.down_reason)
        self.assertIn("/nonexistent/ca.pem", logs.text())
        self.assertEqual(self.meter.details["connection"], "bad TLS settings")

    def test_messages_after_stop_are_ignored(self) -> None:
        self.start()
        self.client.connect()
        self.source.stopService()
        self.client.message("grid/power", "1")
        self.assertEqual(self.readings, [])


# -- against mosquitto ----------------------------------------------------------------------


def next_reading(meter: Meter, predicate: Any = None, timeout: float = WAIT) -> Deferred[Reading]:
    """The next Reading the meter accepts (that matches ``predicate``)."""
    def cancel(_: Deferred[Reading]) -> None:
        meter.remove_listener(listener)

    d: Deferred[Reading] = Deferred(cancel)

    def listener(m: Meter, reading: Reading) -> None:
        if predicate is None or predicate(reading):
            meter.remove_listener(listener)
            d.callback(reading)

    meter.add_listener(listener)
    return d.addTimeout(timeout, reactor)


def until(condition: Any, timeout: float = WAIT, what: str = "condition") -> Deferred[None]:
    """Fires when ``condition()`` holds, checked every 10 ms; fails after ``timeout``."""
    d: Deferred[None] = Deferred()
    calls: list[Any] = []

    def check() -> None:
        if d.called:
            return
        if condition():
            d.callback(None)
        else:
            calls[:] = [reactor.callLater(0.01, check)]

    def stop(result: Any) -> Any:
        for call in calls:
            if call.active():
                call.cancel()
        if hasattr(result, "value") and hasattr(result.value, "args"):
            result.value.args = (f"timed out waiting for {what}",)
        return result

    check()
    return d.addTimeout(timeout, reactor).addBoth(stop)


class BrokerCase(TestCase):
    skip = SKIP
    timeout = 60

    def setUp(self) -> None:
        self.clients = 0

    @inlineCallbacks
    def broker(self, **kw: Any) -> Any:
        broker = Mosquitto(self, **kw)
        yield broker.start()
        return broker

    @inlineCallbacks
    def publisher(self, broker: Mosquitto, **kw: Any) -> Any:
        self.clients += 1
        pub = Subscriber(self, broker, ("meteremu-test/none",), client_id=f"pub-{self.clients}", **kw)
        yield pub.connect()
        return pub

    def source(self, broker: Mosquitto | None, **source: Any) -> Any:
        from meteremu.sources.mqtt.source import MQTTSource

        source.setdefault("host", "127.0.0.1")
        source.setdefault("port", broker.port if broker else free_port())
        source.setdefault("reconnect_delay", "100ms")
        source.setdefault("reconnect_max_delay", "500ms")
        source.setdefault("connect_timeout", "2s")
        self.meter = Meter("grid", reactor, stale_after=60.0, source_type="mqtt")
        src = MQTTSource(self.meter, options(self, **source), reactor)
        src.startService()
        self.addCleanup(lambda: src.stopService() if src.running else None)
        return src


class BrokerTests(BrokerCase):
    @inlineCallbacks
    def test_topic_per_phase_retained_seed_then_live_values(self) -> Any:
        broker = yield self.broker()
        pub = yield self.publisher(broker)
        for i in range(3):
            pub.publish(f"shellies/em3/emeter/{i}/power", f"{100 * (i + 1)}.5", retain=True)
        pub.publish("shellies/em3/emeter/0/voltage", "231.2", retain=True)
        src = self.source(broker, values={"a_power": "shellies/em3/emeter/0/power",
                                          "b_power": "shellies/em3/emeter/1/power",
                                          "c_power": "shellies/em3/emeter/2/power",
                                          "a_voltage": "shellies/em3/emeter/0/voltage"})
        reading = yield next_reading(self.meter, lambda r: r.phases[0].voltage == 231.2)
        self.assertEqual(reading.powers(), (100.5, 200.5, 300.5))
        self.assertTrue(src.connected)
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        self.assertEqual(self.meter.details["connection"], "connected")
        d = next_reading(self.meter, lambda r: r.powers()[1] == -42.0)
        pub.publish("shellies/em3/emeter/1/power", "-42")
        reading = yield d
        self.assertEqual(reading.powers(), (100.5, -42.0, 300.5))
        yield src.stopService()
        self.assertFalse(src.connected)

    @inlineCallbacks
    def test_json_topic_with_paths_timestamp_and_availability(self) -> Any:
        broker = yield self.broker()
        pub = yield self.publisher(broker)
        self.source(broker, topic="tele/sml/SENSOR", timestamp_path="$.ts", availability_topic="tele/sml/LWT",
                    payload_available="Online", payload_not_available="Offline",
                    values={"power": "$.SML.Power", "energy_import": {"path": "$.SML.Total_in", "unit": "kWh"}})
        pub.publish("tele/sml/LWT", "Online", retain=True)
        pub.publish("tele/sml/SENSOR", json.dumps({"ts": T0, "SML": {"Power": 350, "Total_in": 1.5}}),
                    retain=True)
        reading = yield next_reading(self.meter)
        self.assertEqual((reading.total_act_power, reading.measured_at, reading.energy), (350.0, T0, ((1500.0, 0.0),)))
        yield until(lambda: self.meter.freshness() is Freshness.FRESH, what="fresh")
        pub.publish("tele/sml/LWT", "Offline", retain=True)
        yield until(lambda: self.meter.freshness() is Freshness.DOWN, what="down on Offline")
        self.assertEqual(self.meter.down_reason, "tele/sml/LWT says 'Offline'")
        d = next_reading(self.meter)
        pub.publish("tele/sml/SENSOR", json.dumps({"ts": T0 + 1, "SML": {"Power": -20, "Total_in": 1.5}}))
        pub.publish("tele/sml/LWT", "Online", retain=True)
        reading = yield d
        self.assertEqual((reading.total_act_power, reading.measured_at), (-20.0, T0 + 1))
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_publishers_last_will_marks_the_meter_down(self) -> Any:
        from meteremu.mqttclient import BrokerSettings, Message, ReactorMQTTClient

        broker = yield self.broker()
        device = ReactorMQTTClient(BrokerSettings("127.0.0.1", broker.port, "p1-reader",
                                                  will=Message("p1/status", "offline", 1, True)), reactor)
        device.start()
        self.addCleanup(device.stop)
        yield until(lambda: device.connected, what="the publisher's connection")
        device.publish(Message("p1/status", "online", 1, True))
        device.publish(Message("p1/power", "480", 0, True))
        self.source(broker, availability_topic="p1/status", values={"power": "p1/power"})
        yield next_reading(self.meter)
        yield until(lambda: self.meter.freshness() is Freshness.FRESH, what="fresh")
        device.socket().shutdown(socket.SHUT_RDWR)  # the reader dies: the broker sends its will
        yield device.stop()
        yield until(lambda: self.meter.freshness() is Freshness.DOWN, what="down on the last will")
        self.assertEqual(self.meter.down_reason, "p1/status says 'offline'")
        self.assertEqual(self.meter.latest.total_act_power, 480.0)  # kept, but not served as fresh

    @inlineCallbacks
    def test_garbage_payloads_are_ignored_and_the_connection_stays(self) -> Any:
        broker = yield self.broker()
        pub = yield self.publisher(broker)
        pub.publish("grid/power", "10", retain=True)
        src = self.source(broker, values={"power": "grid/power", "a_voltage": {"topic": "grid/v", "path": "$.v"}})
        yield next_reading(self.meter)
        logs = LogCapture(self)
        for payload in (b"\xff\xfe\x00", b"1e999999999", b"[" * 200000, b"{}", b"NaN", b"x" * 2_000_000,
                        b'{"v": {"deep": [1]}}'):
            pub.publish("grid/power", payload)
            pub.publish("grid/v", payload)
        d = next_reading(self.meter)
        pub.publish("grid/power", "20")
        reading = yield d
        self.assertEqual(reading.total_act_power, 20.0)
        self.assertTrue(src.connected)
        self.assertEqual(src.client.last_error, None)
        self.assertIn("sample ignored", logs.text())
        self.assertNotIn("Traceback", logs.text())

    @inlineCallbacks
    def test_broker_restart_reconnects_and_resubscribes(self) -> Any:
        broker = yield self.broker()
        pub = yield self.publisher(broker)
        pub.publish("grid/power", "100", retain=True)
        src = self.source(broker, values={"power": "grid/power"})
        yield next_reading(self.meter)
        readings: list[Reading] = []
        self.meter.add_listener(lambda m, r: readings.append(r))
        yield broker.stop()
        yield until(lambda: not src.connected, what="the disconnect")
        self.assertIn("MQTT connection lost", self.meter.stats.last_error)
        yield broker.start()  # persistence is off: the retained value is gone
        yield until(lambda: src.connected, what="the reconnect")
        pub2 = yield self.publisher(broker)
        d = next_reading(self.meter)
        pub2.publish("grid/power", "250", retain=True)
        reading = yield d
        self.assertEqual(reading.total_act_power, 250.0)
        self.assertEqual([r.total_act_power for r in readings], [250.0])
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_retained_repeat_after_a_reconnect_is_not_a_new_sample(self) -> Any:
        broker = yield self.broker()
        pub = yield self.publisher(broker)
        pub.publish("grid/power", "100", retain=True)
        src = self.source(broker, values={"power": "grid/power"})
        yield next_reading(self.meter)
        readings: list[Reading] = []
        self.meter.add_listener(lambda m, r: readings.append(r))
        messages = src.messages
        src.client.socket().shutdown(socket.SHUT_RDWR)  # the connection dies; the broker keeps the value
        yield until(lambda: src.connected and src.messages > messages, what="reconnect and re-delivery")
        self.assertEqual(readings, [])
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_unreachable_broker_is_retried_and_stops_quickly(self) -> Any:
        src = self.source(None, values={"power": "grid/power"})
        yield until(lambda: self.meter.stats.failures >= 2, what="two failed attempts")
        self.assertFalse(src.connected)
        self.assertIn("MQTT broker mqtt://127.0.0.1:", self.meter.stats.last_error)
        self.assertNotEqual(self.meter.freshness(), Freshness.FRESH)
        started = time.monotonic()
        yield src.stopService()
        self.assertLess(time.monotonic() - started, 1.0)


class SecurityTests(BrokerCase):
    @inlineCallbacks
    def test_password_never_in_logs_errors_or_details(self) -> Any:
        broker = yield self.broker(users={"meteremu": "s3cret-pw", "pub": "pub-pass"})
        pub = yield self.publisher(broker, username="pub", password="pub-pass")
        pub.publish("grid/power", "77", retain=True)
        logs = LogCapture(self)
        register(self)
        config = parse_config({"meters": {"grid": {"source": {
            "type": "mqtt", "host": "127.0.0.1", "port": broker.port, "username": "meteremu",
            "password": "${PW}", "reconnect_delay": "100ms", "reconnect_max_delay": "200ms",
            "values": {"power": "grid/power"}}}}, "devices": []}, "(test)", env={"PW": "wrong-pass-123"})
        from meteremu.sources.mqtt.source import MQTTSource

        meter = Meter("grid", reactor, stale_after=60.0, source_type="mqtt")
        wrong = MQTTSource(meter, config.meters["grid"].source.options, reactor)
        wrong.startService()
        self.addCleanup(lambda: wrong.stopService() if wrong.running else None)
        yield until(lambda: meter.stats.failures >= 2, what="refused attempts")
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertIn("refused", meter.down_reason)
        yield wrong.stopService()
        right = self.source(broker, username="meteremu", password="${PW}", values={"power": "grid/power"})
        reading = yield next_reading(self.meter)
        self.assertEqual(reading.total_act_power, 77.0)
        self.assertTrue(right.connected)
        text = logs.text() + json.dumps(meter.details) + json.dumps(self.meter.details) + \
            str(meter.stats.last_error) + repr(right.options)
        self.assertIn("refused", text)
        for secret in ("wrong-pass-123", "s3cret-pw"):
            self.assertNotIn(secret, text)

    @inlineCallbacks
    def test_tls_with_a_ca_file(self) -> Any:
        from tests.support.mosquitto import make_certificates

        files = make_certificates(self.mktemp())
        broker = yield self.broker(tls=files)
        src = self.source(broker, tls={"ca_file": files.ca}, values={"power": "grid/power"})
        yield until(lambda: src.connected, what="a verified TLS connection")
        self.assertEqual(self.meter.details["broker"], f"mqtts://127.0.0.1:{broker.port}")


# -- end to end: broker → meteremu → a battery asking over UDP and HTTP ---------------------


class Battery(DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: list[Deferred[bytes]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.waiting:
            self.waiting.pop(0).callback(data)

    def ask(self, port: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.waiting.append(d)
        self.transport.write(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', ("127.0.0.1", port))
        return d.addTimeout(5, reactor)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EndToEndTests(BrokerCase):
    @inlineCallbacks
    def test_published_value_is_served_over_udp_and_http(self) -> Any:
        broker = yield self.broker()
        pub = yield self.publisher(broker)
        register(self)
        udp_port = free_udp_port()
        config = test_config(
            self.mktemp(),
            meters={"grid": {"source": {
                "type": "mqtt", "host": "127.0.0.1", "port": broker.port, "reconnect_delay": "100ms",
                "values": {"a_power": "em/0/power", "b_power": "em/1/power",
                           "c_power": {"topic": "em/2", "path": "$.power", "unit": "kW"}}}}},
            devices=[{"type": "shelly_pro_3em", "udp_ports": [udp_port]}])
        app = yield start_app(self, config)
        meter = app.meters["grid"]
        self.assertEqual(meter.stale_after, 60.0)  # a push source
        battery = Battery()
        port = reactor.listenUDP(0, battery, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        d = next_reading(meter)
        pub.publish("em/0/power", "1000.5", retain=True)
        pub.publish("em/1/power", "-200", retain=True)
        pub.publish("em/2", '{"power": 0.25}', retain=True)
        yield d
        status = json.loads((yield battery.ask(udp_port)))["result"]
        self.assertEqual((status["a_act_power"], status["b_act_power"], status["c_act_power"]),
                         (1000.5, -200.0, 250.0))
        self.assertEqual(status["total_act_power"], 1050.5)
        # a new value: it is there on the next UDP and HTTP request
        d = next_reading(meter, lambda r: r.powers()[0] == -321.0)
        pub.publish("em/0/power", "-321")
        yield d
        status = json.loads((yield battery.ask(udp_port)))["result"]
        self.assertEqual(status["a_act_power"], -321.0)
        http = HTTPClient(self)
        _, body = yield http.get(f"http://127.0.0.1:{app.http_port()}/rpc/EM.GetStatus?id=0")
        self.assertEqual(json.loads(body)["a_act_power"], -321.0)
        started = time.monotonic()
        yield app.service.stopService()
        self.assertLess(time.monotonic() - started, 2.0)
