"""MQTT exporter and Home Assistant discovery, against a real mosquitto and a real subscriber.

Pure parts (topics, payloads, discovery configs, change detection, options)
are checked synchronously. Everything else runs a mosquitto per test
(``tests.support.mosquitto``) and watches it with a paho subscriber on its own
thread; every wait is a Deferred with a timeout.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol, Protocol, ServerFactory
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from meteremu.config import build
from meteremu.exporters.mqtt import Options
from meteremu.exporters.mqtt.topics import (
    format_value,
)
from meteremu.exporters.prometheus import Metrics
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.reading import Reading
from tests.support import HTTPClient, asyncio_reactor_skip, start_app, test_config
from tests.support.mosquitto import (
    Mosquitto,
    Subscriber,
    free_port,
    make_certificates,
    mosquitto_skip,
)
from tests.support.shared.mqtt import T0, three_phase

SKIP = asyncio_reactor_skip() or mosquitto_skip()


def until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Deferred[None]:
    """Poll ``predicate`` on the reactor every 20 ms; fail after ``timeout`` seconds."""
    d: Deferred[None] = Deferred()

    def check() -> None:
        if predicate():
            loop.stop()
            d.callback(None)

    loop = LoopingCall(check)
    loop.start(0.02, now=True)

    def timed_out(failure: Any) -> Any:
        if loop.running:
            loop.stop()
        failure.value.args = (f"timed out waiting for {what}",)
        return failure

    d.addTimeout(timeout, reactor)
    return d.addErrback(timed_out)


class FakeStore:
    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values = dict(values or {})

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value


class BrokerCase(TestCase):
    skip = SKIP
    timeout = 60

    @inlineCallbacks
    def broker(self, **kw: Any) -> Any:
        broker = Mosquitto(self, **kw)
        yield broker.start()
        return broker

    @inlineCallbacks
    def subscriber(self, broker: Mosquitto, topics: tuple[str, ...] = ("#",), **kw: Any) -> Any:
        kw.setdefault("client_id", f"sub-{len(self._subscribers)}")
        subscriber = Subscriber(self, broker, topics, **kw)
        self._subscribers.append(subscriber)
        yield subscriber.connect()
        return subscriber

    def setUp(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.meters = MeterSet()
        self.metrics = Metrics(lambda: self.meters.values())

    def meter(self, name: str = "grid", source_type: str = "simulator", reading: Reading | None = None,
              stale_after: float = 3600.0) -> Meter:
        meter = Meter(name, reactor, stale_after=stale_after, source_type=source_type)
        if reading is not None:
            meter.update(reading)
        self.meters.add(meter)
        return meter

    def exporter(self, broker: Mosquitto | None, store: Any = None, start: bool = True, **overrides: Any) -> Any:
        from meteremu.exporters.mqtt.service import MQTTExporter

        data = {"host": "127.0.0.1", "port": broker.port if broker else free_port(), "min_interval": 0,
                "reconnect_delay": "100ms", "reconnect_max_delay": "500ms", "connect_timeout": "2s"}
        data.update(overrides)
        options = build(Options, data, "exporters.mqtt", {})
        self.metrics = Metrics(lambda: self.meters.values())  # one registry per exporter
        exporter = MQTTExporter(options, self.meters, reactor, self.metrics, store)
        exporter.birth_delay = (0.05, 0.1)
        exporter.birth_values_delay = 0.1
        if start:
            exporter.startService()
            self.addCleanup(lambda: exporter.stopService() if exporter.running else None)
        return exporter

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or {})


class PublishTests(BrokerCase):
    @inlineCallbacks
    def test_values_status_and_retained_state(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        meter = self.meter(reading=three_phase(extras={"inverter.1221": 180.5, "circuit.ev": 7000.0}))
        exporter = self.exporter(broker)
        yield exporter.ready
        status = yield sub.wait("meters/status", "online")
        self.assertTrue(status.retain)
        self.assertEqual(status.qos, 1)
        msg = yield sub.wait("meters/simulator/grid/a_act_power")
        self.assertEqual((msg.text, msg.retain, msg.qos), ("2166.2", True, 0))
        total = yield sub.wait("meters/simulator/grid/total_act_power")
        self.assertEqual(total.text, "1925.8")
        yield sub.wait("meters/simulator/grid/circuit_ev_power", "7000.0")
        yield sub.wait("meters/simulator/grid/inverter_1221_power", "180.5")
        avail = yield sub.wait("meters/simulator/grid/availability", "online")
        self.assertTrue(avail.retain)
        for key, value in (("b_voltage", "230.0"), ("c_pf", "-0.72"), ("a_freq", "49.90"),
                           ("total_import_energy", "0.0"), ("c_export_energy", "0.0")):
            got = yield sub.wait(f"meters/simulator/grid/{key}")
            self.assertEqual(got.text, value, key)
        self.assertEqual(sub.matching("meters/simulator/grid/state"), [])  # json_state is off
        self.assertEqual(sub.matching("homeassistant/#"), [])  # discovery is off
        # A client that comes later gets the retained state at once.
        late = yield self.subscriber(broker, ("meters/#",))
        again = yield late.wait("meters/simulator/grid/a_act_power")
        self.assertEqual((again.text, again.retain), ("2166.2", True))
        yield late.wait("meters/status", "online")
        self.assertEqual(self.metric("meteremu_mqtt_connected"), 1.0)
        self.assertGreaterEqual(self.metric("meteremu_mqtt_published_total", {"kind": "value"}), 27)
        self.assertEqual(self.metric("meteremu_mqtt_connection_attempts_total", {"result": "ok"}), 1.0)
        self.assertIs(meter, self.meters["grid"])

    @inlineCallbacks
    def test_qos_retain_and_json_state_options(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        meter = self.meter("house", "envoy", reading=three_phase())
        # A host name: resolved off the reactor thread; ::1 (if first) is refused, 127.0.0.1 answers.
        exporter = self.exporter(broker, host="localhost", qos=1, retain=False, json_state=True,
                                 topic_prefix="home/energy")
        yield exporter.ready
        msg = yield sub.wait("home/energy/envoy/house/a_act_power")
        self.assertEqual((msg.retain, msg.qos), (False, 1))
        state = yield sub.wait("home/energy/envoy/house/state")
        body = json.loads(state.payload)
        self.assertEqual((body["time"], body["a_act_power"], body["total_act_power"]), (T0, 2166.2, 1925.8))
        self.assertFalse(state.retain)
        # Status and availability stay retained whatever ``retain`` says.
        status = yield sub.wait("home/energy/status", "online")
        self.assertTrue(status.retain)
        mark = sub.mark()
        meter.update(three_phase(T0 + 1, powers=(100.0, 3.6, -244.0)))
        state = yield sub.wait("home/energy/envoy/house/state", after=mark)
        self.assertEqual(json.loads(state.payload)["a_act_power"], 100.0)

    @inlineCallbacks
    def test_only_changed_values_are_published(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        # The source's own energy counters keep the energy topics steady too.
        energy = ((1000.0, 0.0), (1000.0, 0.0), (1000.0, 0.0))
        meter = self.meter(reading=three_phase(extras={"pv_power": 10.0}, energy=energy))
        exporter = self.exporter(broker)
        yield exporter.ready
        yield sub.wait("meters/simulator/grid/pv_power", "10.0")
        mark = sub.mark()
        # Same values, newer sample, only pv_power (published last in a batch) changes.
        meter.update(three_phase(T0 + 1, extras={"pv_power": 20.0}, energy=energy))
        yield sub.wait("meters/simulator/grid/pv_power", "20.0", after=mark)
        self.assertEqual([m.topic for m in sub.matching("meters/#", after=mark)],
                         ["meters/simulator/grid/pv_power"])
        # Now a power step: the powers and currents change, voltages do not.
        mark = sub.mark()
        meter.update(three_phase(T0 + 2, powers=(500.0, 3.6, -244.0), extras={"pv_power": 30.0}, energy=energy))
        yield sub.wait("meters/simulator/grid/pv_power", "30.0", after=mark)
        changed = {m.topic.rsplit("/", 1)[1] for m in sub.matching("meters/#", after=mark)}
        self.assertEqual(changed, {"a_act_power", "a_aprt_power", "a_current", "total_act_power",
                                   "total_aprt_power", "total_current", "pv_power"})

    @inlineCallbacks
    def test_min_interval_publishes_the_latest_values_once_per_interval(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        meter = self.meter(reading=three_phase(powers=(1.0, 0.0, 0.0)))
        exporter = self.exporter(broker, min_interval="700ms")
        yield exporter.ready
        yield sub.wait("meters/simulator/grid/a_act_power", "1.0")
        mark = sub.mark()
        started = time.monotonic()
        for i in range(2, 7):  # five readings in a burst
            meter.update(three_phase(T0 + i, powers=(float(i), 0.0, 0.0)))
        last = yield sub.wait("meters/simulator/grid/a_act_power", "6.0", after=mark)
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertEqual([m.text for m in sub.matching("meters/simulator/grid/a_act_power", after=mark)], ["6.0"])
        self.assertTrue(last.retain)

    @inlineCallbacks
    def test_availability_follows_the_meters_freshness(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        meter = self.meter(reading=three_phase())
        exporter = self.exporter(broker)
        yield exporter.ready
        topic = "meters/simulator/grid/availability"
        yield sub.wait(topic, "online")
        mark = sub.mark()
        meter.report_failure("upstream unreachable")
        down = yield sub.wait(topic, after=mark)
        self.assertEqual((down.text, down.retain), ("offline", True))
        mark = sub.mark()
        meter.update(three_phase(T0 + 5))
        yield sub.wait(topic, "online", after=mark)
        # A meter that never had a reading is not available, and has no values yet.
        mark = sub.mark()
        self.meter("garage")
        yield sub.wait("meters/simulator/garage/availability", "offline", after=mark)
        self.assertEqual(sub.matching("meters/simulator/garage/+", after=mark)[0].topic,
                         "meters/simulator/garage/availability")

    @inlineCallbacks
    def test_clean_stop_says_offline(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        self.meter(reading=three_phase())
        exporter = self.exporter(broker)
        yield sub.wait("meters/simulator/grid/availability", "online")
        mark = sub.mark()
        yield exporter.stopService()
        status = yield sub.wait("meters/status", "offline", after=mark)
        self.assertTrue(status.retain)
        yield sub.wait("meters/simulator/grid/availability", "offline", after=mark)
        self.assertFalse(exporter.connected)

    @inlineCallbacks
    def test_last_will_on_a_killed_connection_then_reconnect(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        self.meter(reading=three_phase())
        exporter = self.exporter(broker)
        yield sub.wait("meters/status", "online")
        yield sub.wait("meters/simulator/grid/a_act_power")
        mark = sub.mark()
        # The TCP connection dies without a DISCONNECT: the broker sends the Will.
        exporter.client.socket().shutdown(socket.SHUT_RDWR)
        will = yield sub.wait("meters/status", "offline", after=mark)
        self.assertTrue(will.retain)
        # The exporter reconnects by itself and says online again, with all values.
        yield sub.wait("meters/status", "online", after=mark)
        yield sub.wait("meters/simulator/grid/a_act_power", "2166.2", after=mark)
        self.assertEqual(self.metric("meteremu_mqtt_connection_attempts_total", {"result": "ok"}), 2.0)

    @inlineCallbacks
    def test_broker_restart_and_reconnect(self):
        broker = yield self.broker()
        meter = self.meter(reading=three_phase())
        exporter = self.exporter(broker, discovery=True)
        yield until(lambda: exporter.connected, what="first connection")
        yield broker.stop()
        yield until(lambda: not exporter.connected, what="the disconnect")
        self.assertEqual(self.metric("meteremu_mqtt_connected"), 0.0)
        # Readings go on while the broker is away; nothing piles up.
        meter.update(three_phase(T0 + 1, powers=(42.0, 0.0, 0.0)))
        yield until(lambda: (self.metric("meteremu_mqtt_connection_attempts_total", {"result": "failed"}) or 0) >= 2,
                    what="failed reconnect attempts")
        yield broker.start()  # same port; persistence off, so every retained message is gone
        sub = yield self.subscriber(broker)
        yield sub.wait("meters/status", "online")
        latest = yield sub.wait("meters/simulator/grid/a_act_power")
        self.assertEqual((latest.text, latest.retain), ("42.0", True))
        yield sub.wait("homeassistant/sensor/meteremu_grid/a_act_power/config")
        yield sub.wait("meters/simulator/grid/availability", "online")
        self.assertTrue(exporter.connected)

    @inlineCallbacks
    def test_unreachable_broker_does_not_fail_the_start(self):
        port = free_port()  # nothing listens here yet
        self.meter(reading=three_phase())
        exporter = self.exporter(None, port=port)
        yield exporter.ready
        yield until(lambda: (self.metric("meteremu_mqtt_connection_attempts_total", {"result": "failed"}) or 0) >= 2,
                    what="failed attempts")
        self.assertFalse(exporter.connected)
        broker = Mosquitto(self, port=port)
        yield broker.start()
        sub = yield self.subscriber(broker)
        yield sub.wait("meters/simulator/grid/a_act_power", "2166.2")


class StuckBroker(Protocol):
    """Answers CONNECT with a CONNACK, then never reads again (a hung broker)."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        if data[:1] == b"\x10":
            self.transport.write(b"\x20\x02\x00\x00")
            self.transport.pauseProducing()


class SlowBrokerTests(BrokerCase):
    @inlineCallbacks
    def test_refresh_interval_republishes_unchanged_values(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        self.meter(reading=three_phase())
        self.exporter(broker, refresh_interval="1s")
        first = yield sub.wait("meters/simulator/grid/a_act_power")
        mark = sub.mark()
        again = yield sub.wait("meters/simulator/grid/a_act_power", after=mark)
        self.assertEqual(again.text, first.text)

    @inlineCallbacks
    def test_a_hung_broker_gets_a_bounded_backlog(self):
        factory = ServerFactory.forProtocol(StuckBroker)
        factory.connections = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [c.transport.abortConnection() for c in factory.connections])
        extras = {f"circuit.c{i}": 0.0 for i in range(50)}
        meter = self.meter(reading=three_phase(extras=extras))
        exporter = self.exporter(None, port=port.getHost().port)
        exporter.max_backlog = 200
        yield until(lambda: exporter.connected, what="the CONNACK")
        exporter.client.socket().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2048)
        slowest = 0.0
        for i in range(1, 400):
            started = time.monotonic()
            meter.update(three_phase(T0 + i, powers=(float(i), 1.0, 1.0),
                                     extras={k: float(i) for k in extras}))
            yield deferLater(reactor, 0, lambda: None)  # one reactor turn: the flush runs
            slowest = max(slowest, time.monotonic() - started)
            # At most one batch (about 80 messages) beyond the limit is ever queued.
            self.assertLessEqual(exporter.client.backlog(), exporter.max_backlog + 100)
        # The updates that found the socket backed up were skipped (and coalesced), not queued.
        self.assertGreaterEqual(self.metric("meteremu_mqtt_dropped_total", {"reason": "backlog"}), 1)
        # A publish that blocked on the hung broker would stall for good; the bound only
        # has to tell "never blocks" from that, not measure speed (that is bench/'s job),
        # so it leaves room for a busy CI machine (0.4 s seen once at 0.1).
        self.assertLess(slowest, 2.0)
        stopping = time.monotonic()
        yield exporter.stopService()  # offline cannot be delivered: bounded wait, then closed
        self.assertLess(time.monotonic() - stopping, 5.0)
        self.assertIsNone(exporter.client.socket())


class DiscoveryTests(BrokerCase):
    @inlineCallbacks
    def test_configs_field_by_field(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        self.meter("grid", "envoy", reading=three_phase(extras={"inverter.1221": 180.5, "gas": 12.5}))
        exporter = self.exporter(broker, discovery=True, node_id="house")
        yield exporter.ready
        msg = yield sub.wait("homeassistant/sensor/house_grid/a_act_power/config")
        self.assertTrue(msg.retain)
        self.assertEqual(msg.qos, 1)
        config = json.loads(msg.payload)
        self.assertEqual(config["name"], "Phase A power")
        self.assertEqual(config["unique_id"], "house_grid_a_act_power")
        self.assertEqual(config["state_topic"], "meters/envoy/grid/a_act_power")
        self.assertEqual(config["device_class"], "power")
        self.assertEqual(config["state_class"], "measurement")
        self.assertEqual(config["unit_of_measurement"], "W")
        self.assertEqual(config["availability"], [{"topic": "meters/status"},
                                                  {"topic": "meters/envoy/grid/availability"}])
        self.assertEqual(config["availability_mode"], "all")
        self.assertEqual((config["payload_available"], config["payload_not_available"]), ("online", "offline"))
        self.assertEqual(config["device"]["identifiers"], ["house_grid"])
        self.assertEqual(config["device"]["name"], "grid")
        self.assertEqual(config["device"]["manufacturer"], "meteremu")
        self.assertEqual(config["device"]["model"], "envoy meter")
        self.assertEqual(config["origin"]["name"], "meteremu")
        energy = json.loads((yield sub.wait("homeassistant/sensor/house_grid/total_import_energy/config")).payload)
        self.assertEqual((energy["device_class"], energy["state_class"], energy["unit_of_measurement"]),
                         ("energy", "total_increasing", "Wh"))
        self.assertEqual(energy["state_topic"], "meters/envoy/grid/total_import_energy")
        gas = json.loads((yield sub.wait("homeassistant/sensor/house_grid/gas/config")).payload)
        self.assertEqual((gas["device_class"], gas["state_class"], gas["unit_of_measurement"]),
                         ("gas", "total_increasing", "m³"))
        inverter = json.loads((yield sub.wait("homeassistant/sensor/house_grid/inverter_1221_power/config")).payload)
        self.assertEqual(inverter["name"], "Inverter 1221 power")
        # One config per published value; every config's state topic gets a value.
        configs = sub.matching("homeassistant/sensor/house_grid/+/config")
        self.assertEqual(len(configs), 18 + 3 + 6 + 2 + 2)
        self.assertEqual(len({json.loads(m.payload)["unique_id"] for m in configs}), len(configs))
        for m in configs:
            yield sub.wait(json.loads(m.payload)["state_topic"])
        # Each config comes before the first value on its state topic.
        index = {m: i for i, m in enumerate(sub.messages)}
        first_value = sub.matching("meters/envoy/grid/a_act_power")[0]
        self.assertLess(index[msg], index[first_value])

    @inlineCallbacks
    def test_birth_message_republishes_configs_then_values(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        # A retained "online" is old news (delivered on every subscribe): ignored.
        sub.publish("homeassistant/status", "online", retain=True)
        yield sub.wait("homeassistant/status", "online")
        self.meter(reading=three_phase())
        exporter = self.exporter(broker, discovery=True)
        config_topic = "homeassistant/sensor/meteremu_grid/a_act_power/config"
        yield sub.wait(config_topic)
        yield sub.wait("meters/simulator/grid/total_export_energy")
        self.assertEqual(self.metric("meteremu_mqtt_ha_births_total"), 0.0)
        sub.publish("homeassistant/status", "", retain=True)  # clear it again
        yield sub.wait("homeassistant/status", b"")
        self.assertEqual(self.metric("meteremu_mqtt_ha_births_total"), 0.0)
        mark = sub.mark()
        sub.publish("homeassistant/status", "online")  # Home Assistant (re)started
        again = yield sub.wait(config_topic, after=mark)
        self.assertTrue(again.retain)
        value = yield sub.wait("meters/simulator/grid/a_act_power", "2166.2", after=mark)
        index = {m: i for i, m in enumerate(sub.messages)}
        self.assertLess(index[again], index[value])
        yield sub.wait("meters/simulator/grid/availability", "online", after=mark)
        self.assertEqual(len(sub.matching("homeassistant/sensor/meteremu_grid/+/config", after=mark)), 29)
        self.assertEqual(self.metric("meteremu_mqtt_ha_births_total"), 1.0)
        # "offline" on the birth topic changes nothing.
        mark = sub.mark()
        sub.publish("homeassistant/status", "offline")
        sub.publish("homeassistant/status", "online")
        yield sub.wait(config_topic, after=mark)
        self.assertEqual(self.metric("meteremu_mqtt_ha_births_total"), 2.0)
        self.assertTrue(exporter.connected)

    @inlineCallbacks
    def test_meters_added_and_removed_at_runtime(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        store = FakeStore()
        self.meter(reading=three_phase())
        exporter = self.exporter(broker, discovery=True, store=store)
        yield sub.wait("homeassistant/sensor/meteremu_grid/total_act_power/config")
        mark = sub.mark()
        garage = Meter("garage", reactor, stale_after=3600.0, source_type="simulator")
        self.meters.add(garage)
        yield sub.wait("meters/simulator/garage/availability", "offline", after=mark)
        garage.update(three_phase(powers=(10.0, 0.0, 0.0), extras={"pv_power": 5.0}))
        yield sub.wait("homeassistant/sensor/meteremu_garage/pv_power/config", after=mark)
        yield sub.wait("meters/simulator/garage/pv_power", "5.0", after=mark)
        self.assertIn("simulator/garage", store.values["mqtt:retained"])
        mark = sub.mark()
        self.meters.remove("garage")
        cleared = yield sub.wait("homeassistant/sensor/meteremu_garage/pv_power/config", b"", after=mark)
        self.assertTrue(cleared.retain)
        yield sub.wait("meters/simulator/garage/pv_power", b"", after=mark)
        yield sub.wait("meters/simulator/garage/availability", b"", after=mark)
        self.assertEqual(len(sub.matching("homeassistant/sensor/meteremu_garage/+/config", after=mark)), 30)
        self.assertNotIn("simulator/garage", store.values["mqtt:retained"])
        # Readings of the removed meter are not published any more.
        garage.update(three_phase(T0 + 1, powers=(11.0, 0.0, 0.0)))
        # A new client sees grid's retained topics and nothing of garage.
        late = yield self.subscriber(broker)
        yield late.wait("homeassistant/sensor/meteremu_grid/a_act_power/config")
        yield late.wait("meters/simulator/grid/availability")
        self.assertEqual(late.matching("+/sensor/meteremu_garage/#") + late.matching("meters/simulator/garage/#"),
                         [])
        self.assertTrue(exporter.connected)

    @inlineCallbacks
    def test_topics_of_meters_gone_since_the_last_run_are_cleared(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        old = ["homeassistant/sensor/meteremu_old/a_act_power/config", "meters/simulator/old/a_act_power",
               "meters/simulator/old/availability"]
        for topic in old:
            sub.publish(topic, "stale", retain=True)
        for topic in old:
            yield sub.wait(topic, "stale")
        store = FakeStore({"mqtt:retained": {"simulator/old": old, "simulator/grid": []}})
        self.meter(reading=three_phase())
        self.exporter(broker, discovery=True, store=store)
        for topic in old:
            cleared = yield sub.wait(topic, b"")
            self.assertTrue(cleared.retain)
        yield sub.wait("homeassistant/sensor/meteremu_grid/a_act_power/config")
        self.assertEqual(sorted(store.values["mqtt:retained"]), ["simulator/grid"])
        late = yield self.subscriber(broker)
        yield late.wait("meters/simulator/grid/a_act_power")
        self.assertEqual([m for m in late.messages if "/old/" in m.topic or "_old/" in m.topic], [])


class SecurityTests(BrokerCase):
    def capture_logs(self) -> list[str]:
        texts: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            texts.append(formatEvent(event) or "")
            if event.get("log_failure") is not None:
                texts.append(str(event["log_failure"].getTraceback()))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return texts

    @inlineCallbacks
    def test_username_and_password(self):
        broker = yield self.broker(users={"meteremu": "right-pass", "watcher": "watch"})
        sub = yield self.subscriber(broker, username="watcher", password="watch")
        logs = self.capture_logs()
        self.meter(reading=three_phase())
        wrong = self.exporter(broker, username="meteremu", password="wrong-pass-123", node_id="wrong")
        yield wrong.ready
        yield until(lambda: (self.metric("meteremu_mqtt_connection_attempts_total", {"result": "failed"}) or 0) >= 2,
                    what="refused attempts")
        self.assertFalse(wrong.connected)
        self.assertTrue(any("refused" in t and "authori" in t.lower() for t in logs), logs)
        self.assertFalse([t for t in logs if "wrong-pass-123" in t])
        yield wrong.stopService()
        self.assertEqual(sub.matching("meters/#"), [])
        right = self.exporter(broker, username="meteremu", password="right-pass", node_id="right")
        yield sub.wait("meters/simulator/grid/a_act_power", "2166.2")
        self.assertTrue(right.connected)
        self.assertFalse([t for t in logs if "right-pass" in t or "wrong-pass-123" in t])

    @inlineCallbacks
    def test_tls_with_ca_file_client_certificate_and_insecure(self):
        files = make_certificates(self.mktemp())
        broker = yield self.broker(tls=files, require_certificate=True)
        sub = yield self.subscriber(broker)
        logs = self.capture_logs()
        self.meter(reading=three_phase())
        exporter = self.exporter(broker, node_id="verified", tls={
            "ca_file": files.ca, "certfile": files.client_cert, "keyfile": files.client_key})
        yield sub.wait("meters/simulator/grid/a_act_power", "2166.2")
        self.assertTrue(exporter.connected)
        yield exporter.stopService()
        # A broker certificate from an unknown CA is refused, and said so.
        wrong = self.exporter(broker, node_id="wrongca", tls={
            "ca_file": files.other_ca, "certfile": files.client_cert, "keyfile": files.client_key})
        yield until(lambda: any("certificate rejected" in t for t in logs),
                    what="a certificate error in the log")
        self.assertFalse(wrong.connected)
        yield wrong.stopService()
        # insecure: no CA given, any certificate accepted.
        insecure = self.exporter(broker, node_id="insecure", tls={
            "insecure": True, "certfile": files.client_cert, "keyfile": files.client_key})
        yield until(lambda: insecure.connected, what="an insecure TLS connection")
        self.assertTrue(any("not checked" in t for t in logs))

    @inlineCallbacks
    def test_tls_broker_without_client_certificate(self):
        files = make_certificates(self.mktemp())
        broker = yield self.broker(tls=files)
        self.meter(reading=three_phase())
        exporter = self.exporter(broker, tls={"ca_file": files.ca})
        yield until(lambda: exporter.connected, what="a verified TLS connection")
        # The host name is checked: 127.0.0.1 is in the certificate, so this one passes;
        # the plain-TCP client of a TLS port does not get in.
        plain = self.exporter(broker, node_id="plain")
        yield until(lambda: (self.metric("meteremu_mqtt_connection_attempts_total", {"result": "failed"}) or 0) >= 1,
                    what="a failed plain attempt")
        self.assertFalse(plain.connected)

    @inlineCallbacks
    def test_unreadable_tls_file_fails_the_start(self):
        config = test_config(self.mktemp(), meters={"grid": {"source": {"type": "simulator", "interval": "1h"}}},
                             devices=[], exporters={"mqtt": {"host": "127.0.0.1", "port": free_port(),
                                                             "tls": {"ca_file": "/nonexistent/ca.pem"}}})
        error = yield self.assertFailure(start_app(self, config), Exception)
        self.assertIn("exporters.mqtt.tls.ca_file", str(error))
        self.assertIn("/nonexistent/ca.pem", str(error))


class Battery(DatagramProtocol):
    def __init__(self) -> None:
        self.replies: list[Deferred[bytes]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.replies:
            self.replies.pop(0).callback(data)

    def ask(self, data: bytes, port: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.replies.append(d)
        self.transport.write(data, ("127.0.0.1", port))
        return d.addTimeout(5, reactor)


class BlackHole:
    """A TCP port whose accept queue is full: a connect() to it hangs in SYN_SENT."""

    def __init__(self, case: TestCase) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = self.server.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(filler)
        case.addCleanup(self.close)

    def close(self) -> None:
        for s in [*self.fillers, self.server]:
            s.close()


class AppTests(BrokerCase):
    @inlineCallbacks
    def test_app_publishes_the_simulated_meter_with_metrics(self):
        broker = yield self.broker()
        sub = yield self.subscriber(broker)
        config = test_config(self.mktemp(), meters={"grid": {"source": {"type": "simulator", "interval": "1h",
                                                                        "start_time": "12:00"}}},
                             devices=[], exporters={"mqtt": {"host": "127.0.0.1", "port": broker.port,
                                                             "discovery": True, "min_interval": 0}})
        app = yield start_app(self, config)
        grid = app.meters["grid"]
        msg = yield sub.wait("meters/simulator/grid/total_act_power")
        self.assertEqual(msg.text, format_value(grid.latest.total_act_power, 1))
        yield sub.wait("homeassistant/sensor/meteremu_grid/total_act_power/config")
        yield sub.wait("meters/simulator/grid/pv_power")  # the simulator's extras
        http = HTTPClient(self)
        _, body = yield http.get(f"http://127.0.0.1:{app.http_port()}/metrics")
        text = body.decode()
        self.assertIn("meteremu_mqtt_connected 1.0", text)
        self.assertRegex(text, r'meteremu_mqtt_published_total\{kind="discovery"\} \d+')
        mark = sub.mark()
        yield app.service.stopService()
        yield sub.wait("meters/status", "offline", after=mark)

    @inlineCallbacks
    def test_dead_broker_does_not_delay_the_start_or_udp_replies(self):
        hole = BlackHole(self)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp_port = udp.getsockname()[1]
        udp.close()
        config = test_config(self.mktemp(), meters={"grid": {"source": {"type": "simulator", "interval": "1h",
                                                                        "start_time": "12:00"}}},
                             devices=[{"type": "shelly_pro_3em", "udp_ports": [udp_port]}],
                             exporters={"mqtt": {"host": "127.0.0.1", "port": hole.port, "min_interval": 0,
                                                 "connect_timeout": "3s"}})
        started = time.monotonic()
        app = yield start_app(self, config)
        self.assertLess(time.monotonic() - started, 1.0)
        exporter = app.exporters["mqtt"]
        self.assertTrue(exporter.client.connecting)  # the connect is in flight, not blocking
        battery = Battery()
        port = reactor.listenUDP(0, battery, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        for i in range(5):
            app.meters["grid"].update(three_phase(T0 + i))  # readings flow while the broker hangs
            asked = time.monotonic()
            raw = yield battery.ask(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', udp_port)
            self.assertLess(time.monotonic() - asked, 0.25)
            self.assertEqual(json.loads(raw)["id"], 1)
        self.assertFalse(exporter.connected)
        registry = app.metrics.registry
        yield until(lambda: (registry.get_sample_value("meteremu_mqtt_connection_attempts_total",
                                                       {"result": "failed"}) or 0) >= 1,
                    timeout=10, what="the connect timeout")
        self.assertEqual(registry.get_sample_value("meteremu_mqtt_connected"), 0.0)
        stopping = time.monotonic()
        yield app.service.stopService()
        self.assertLess(time.monotonic() - stopping, 1.0)
