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
from fractions import Fraction
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meteremu.config import ConfigError, load_meter_file, parse_config
from meteremu.meter import Freshness, Meter
from meteremu.reading import Reading
from meteremu.sources.mqtt import Value
from meteremu.sources.mqtt.mapping import (
    layout_from_options,
)
from tests.support import ROOT, HTTPClient, asyncio_reactor_skip, start_app, test_config
from tests.support.mosquitto import Mosquitto, Subscriber, free_port, mosquitto_skip
from tests.support.shared.mqtt_source import T0, LogCapture, options, register

WAIT = 10.0


SKIP = asyncio_reactor_skip() or mosquitto_skip()


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
