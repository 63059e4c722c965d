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
import time
from decimal import Decimal
from fractions import Fraction
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.meter import Freshness, Meter
from meteremu.reading import Reading
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
from tests.support.shared.mqtt_source import T0, LogCapture, options


def combiner(case: Any, **source: Any) -> Combiner:
    opts = options(case, **source)
    smoothing = opts.smoothing
    return Combiner(layout_from_options(opts),
                    Smoother(smoothing.window, smoothing.alpha) if smoothing else None,
                    expire_after=opts.expire_after)


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
