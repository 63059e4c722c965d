"""The esphome source against a fake ESPHome device on loopback (real TCP, real Noise encryption).

The fake (:mod:`tests.support.fake_esphome`) is checked against aioesphomeapi's
own client in test_fake_esphome.py; here the source's client is aioesphomeapi
too, run on the reactor's asyncio loop. Faults are real: a wrong key, a
plaintext device, a wrong password, another device's name, sensors the
device does not have, a dropped connection, garbage on the wire, unanswered
pings, silence, NaN states. Nothing waits on the wall clock: each test
waits for the source's events (``when``) or the fake's.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness, Meter
from meteremu.sources.esphome.options import EsphomeOptions, EsphomeSensor, EsphomeValues
from meteremu.sources.esphome.source import EsphomeSource
from tests.support import asyncio_reactor_skip
from tests.support.fake_esphome import KEY, OTHER_KEY, FakeEsphomeDevice, FakeSensor, three_phase

PHASES = EsphomeValues(a_power="power_l1", b_power="Power L2", c_power="power_l3",
                       energy_import="energy_import", energy_export="energy_export")


class _Records(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


class EsphomeCase(TestCase):
    timeout = 30
    skip = asyncio_reactor_skip()

    def setUp(self) -> None:
        """Every log line (Twisted's, and aioesphomeapi's stdlib logging) is kept for the secret checks."""
        self.logged: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            self.logged.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        handler = _Records(self.logged)
        root = logging.getLogger()
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        self.addCleanup(root.removeHandler, handler)
        self.addCleanup(root.setLevel, level)

    def device(self, sensors: list[FakeSensor] | None = None, **kw: Any) -> tuple[FakeEsphomeDevice, int]:
        device = FakeEsphomeDevice(sensors if sensors is not None else three_phase(), **kw)
        port = device.listen()
        self.addCleanup(device.stop)
        return device, port

    def source(self, port: int, values: EsphomeValues = PHASES, **kw: Any) -> tuple[EsphomeSource, Meter]:
        meter = Meter("grid", reactor, stale_after=3600.0, source_type="esphome")
        settings: dict[str, Any] = {"encryption_key": KEY, "max_age": 30.0, "timeout": 5.0,
                                    "reconnect_min": 0.05, "reconnect_max": 0.2, **kw}
        options = EsphomeOptions(host=f"127.0.0.1:{port}", values=values, **settings)
        self.assertEqual(options.validate(), [])
        source = EsphomeSource(meter, options, reactor, rng=lambda: 1.0)
        self.addCleanup(source.stopService)
        source.startService()
        return source, meter

    def assert_no_secret(self, source: EsphomeSource, meter: Meter, *secrets: str) -> None:
        said = json.dumps([meter.stats.last_error, meter.down_reason, meter.details, source._said,
                           repr(source.options), self.logged], default=str)
        self.assertTrue(self.logged)
        for secret in secrets:
            self.assertNotIn(secret, said)
            self.assertNotIn(secret[:12], said)

    @inlineCallbacks
    def first_full_reading(self, source: EsphomeSource, meter: Meter) -> Any:
        """Until the meter has a reading with every sensor in it (power and energy)."""
        while meter.latest is None or meter.latest.energy is None:
            yield source.when("sample")


class ReadingTests(EsphomeCase):
    @inlineCallbacks
    def test_per_phase_power_with_units_and_counters(self):
        device, port = self.device()
        source, meter = self.source(port)
        yield source.when("connected")
        yield self.first_full_reading(source, meter)
        latest = meter.latest
        self.assertEqual([round(p.act_power, 3) for p in latest.phases], [1200.5, -250.0, 300.0])  # 0.3 kW
        self.assertEqual(latest.energy[0], (12345600.0, 789250.0))  # kWh and Wh → Wh (float32 read as meant)
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        self.assertEqual(meter.details["device"], "energy-meter")
        self.assertEqual(meter.details["sensors"]["b_power"], "power_l2 (W)")
        self.assertEqual(meter.details["sensors"]["c_power"], "power_l3 (kW)")
        self.assertTrue(meter.details["encrypted"])
        self.assert_no_secret(source, meter, KEY)

        device.publish(power_l1=-1500.0, power_l3=1.25)
        while round(meter.latest.phases[2].act_power, 3) != 1250.0:
            yield source.when("sample")
        self.assertEqual([round(p.act_power, 3) for p in meter.latest.phases], [-1500.0, -250.0, 1250.0])
        self.assertEqual(meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_a_total_by_name_with_voltage_current_and_a_unit_override(self):
        sensors = [FakeSensor(10, "grid_power", "Grid Power", "kW", -0.8),
                   FakeSensor(11, "grid_voltage", "Grid Voltage", "V", 231.0, "voltage"),
                   FakeSensor(12, "grid_current", "Grid Current", "", 3500.0, "current")]
        _, port = self.device(sensors)
        values = EsphomeValues(power="Grid Power", a_voltage="grid_voltage",
                               a_current=EsphomeSensor("grid_current", unit="mA"))
        source, meter = self.source(port, values)
        while meter.latest is None or meter.latest.phases[0].voltage != 231.0:
            yield source.when("sample")
        phase = meter.latest.phases[0]
        self.assertEqual(len(meter.latest.phases), 1)
        self.assertAlmostEqual(phase.act_power, -800.0)
        self.assertAlmostEqual(phase.current, 3.5)
        self.assertIsNone(meter.latest.energy)

    @inlineCallbacks
    def test_other_entity_types_sharing_a_key_are_ignored(self):
        """ESPHome's keys hash object_ids: a binary sensor may have a sensor's key."""
        from aioesphomeapi import api_pb2

        device, port = self.device()
        source, meter = self.source(port)
        yield self.first_full_reading(source, meter)
        device.send(api_pb2.BinarySensorStateResponse(key=1, state=True),
                    api_pb2.SwitchStateResponse(key=2, state=False))
        device.publish(power_l3=0.5)
        while round(meter.latest.phases[2].act_power, 3) != 500.0:
            yield source.when("sample")
        self.assertEqual([round(p.act_power, 3) for p in meter.latest.phases], [1200.5, -250.0, 500.0])
        self.assertEqual(meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_a_newer_device_that_leaves_object_ids_out(self):
        """API 1.14+: the device may send no object_id; the client computes it from the name."""
        _, port = self.device(api_version=(1, 14), object_ids=False)
        source, meter = self.source(port)
        yield self.first_full_reading(source, meter)
        self.assertEqual([round(p.act_power, 3) for p in meter.latest.phases], [1200.5, -250.0, 300.0])
        self.assertEqual(meter.details["sensors"]["a_power"], "power_l1 (W)")

    @inlineCallbacks
    def test_invert(self):
        _, port = self.device()
        source, meter = self.source(port, invert=True)
        yield self.first_full_reading(source, meter)
        self.assertEqual([round(p.act_power, 3) for p in meter.latest.phases], [-1200.5, 250.0, -300.0])

    @inlineCallbacks
    def test_nan_never_becomes_data(self):
        """A sensor without a value (ESPHome sends NaN, missing_state): stale at once, the old value kept
        but not fresh; a value again: fresh."""
        device, port = self.device()
        source, meter = self.source(port)
        yield self.first_full_reading(source, meter)
        before = meter.latest
        stale = source.when("stale")
        device.publish(power_l2=None)
        reason = yield stale
        self.assertIn("power_l2", reason)
        self.assertIn("NaN", reason)
        self.assertIs(meter.latest, before)
        self.assertEqual(meter.freshness(), Freshness.STALE)
        device.publish(power_l2=10.0)
        yield source.when("sample")
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        self.assertEqual(round(meter.latest.phases[1].act_power, 3), 10.0)

    @inlineCallbacks
    def test_a_device_that_starts_without_values(self):
        sensors = three_phase()
        sensors[0].state = None
        device, port = self.device(sensors)
        source, meter = self.source(port)
        reason = yield source.when("stale")
        self.assertIn("power_l1", reason)
        self.assertIsNone(meter.latest)
        device.publish(power_l1=5.0)
        yield source.when("sample")
        self.assertEqual(meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_a_sensor_that_never_sends(self):
        """The first states may take a moment; a power sensor with none after max_age: stale, named."""
        sensors = three_phase()
        sensors[2].silent = True
        device, port = self.device(sensors)
        source, meter = self.source(port, max_age=0.3)
        yield source.when("connected")
        reason = yield source.when("stale")
        self.assertIn("waiting for a state of sensor power_l3 (c_power)", reason)
        self.assertIsNone(meter.latest)
        self.assertEqual(meter.details["stale"], reason)
        self.assertIn("no state of sensor power_l1 (a_power)", reason)  # the others: silent for max_age
        device.publish(power_l1=1.0, power_l2=2.0, power_l3=0.1)
        while meter.latest is None:
            yield source.when("sample")
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        self.assertNotIn("stale", meter.details)

    @inlineCallbacks
    def test_out_of_range_is_refused(self):
        device, port = self.device()
        source, meter = self.source(port, max_power=10000.0)
        yield self.first_full_reading(source, meter)
        stale = source.when("stale")
        device.publish(power_l3=50.0)  # kW: 50 000 W
        self.assertIn("out of range", (yield stale))
        self.assertIn("out of range", meter.stats.last_error)
        self.assertEqual(round(meter.latest.phases[2].act_power, 3), 300.0)

    @inlineCallbacks
    def test_silence_makes_the_meter_stale(self):
        device, port = self.device()
        source, meter = self.source(port, max_age=0.3)
        yield self.first_full_reading(source, meter)
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        reason = yield source.when("stale")
        self.assertIn("no state of sensor", reason)
        self.assertIn("max_age 0.3 s", reason)
        self.assertEqual(meter.freshness(), Freshness.STALE)
        self.assertEqual(source.state, "connected")  # the connection is fine; the sensor is silent
        device.publish(power_l1=1.0, power_l2=2.0, power_l3=0.003)
        yield source.when("sample")
        self.assertEqual(meter.freshness(), Freshness.FRESH)


class FaultTests(EsphomeCase):
    @inlineCallbacks
    def test_wrong_key_is_a_clear_error_without_the_key(self):
        device, port = self.device(key=OTHER_KEY)
        source, meter = self.source(port)
        message = yield source.when("failure")
        self.assertEqual(source.state, "bad key")
        self.assertIn("refused the encryption key", message)
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertEqual(meter.details["retry_in"], 0.2)  # reconnect_max: hoping will not help
        self.assert_no_secret(source, meter, KEY, OTHER_KEY)
        self.assertIn("the client's key does not match", device.wire_errors[0])

    @inlineCallbacks
    def test_plaintext_device_and_no_key_for_an_encrypted_one(self):
        _, plain_port = self.device(key=None)
        source, meter = self.source(plain_port)
        message = yield source.when("failure")
        self.assertIn("has no API encryption", message)
        self.assertEqual(source.state, "bad key")
        yield source.stopService()

        _, port = self.device()
        source, meter = self.source(port, encryption_key=None)
        message = yield source.when("failure")
        self.assertIn("requires API encryption", message)
        self.assertEqual(meter.freshness(), Freshness.DOWN)

    @inlineCallbacks
    def test_plaintext_with_the_legacy_password(self):
        _, port = self.device(key=None, password="hunter2-pw")
        source, meter = self.source(port, encryption_key=None, password="hunter2-pw")
        yield self.first_full_reading(source, meter)
        self.assertFalse(meter.details["encrypted"])
        yield source.stopService()
        source, meter = self.source(port, encryption_key=None, password="wrong-pw-123")
        message = yield source.when("failure")
        self.assertEqual(source.state, "bad password")
        self.assertIn("refused the password", message)
        self.assert_no_secret(source, meter, "wrong-pw-123", "hunter2-pw")

    @inlineCallbacks
    def test_another_device(self):
        _, port = self.device(name="boiler-sensor")
        source, meter = self.source(port, expected_name="energy-meter")
        message = yield source.when("failure")
        self.assertEqual(source.state, "wrong device")
        self.assertIn("boiler-sensor", message)

    @inlineCallbacks
    def test_sensors_the_device_does_not_have(self):
        _, port = self.device()
        values = EsphomeValues(a_power="power_l1", b_power="power_b", c_power="power_l3")
        source, meter = self.source(port, values)
        message = yield source.when("failure")
        self.assertEqual(source.state, "sensors missing")
        self.assertIn("b_power: no sensor 'power_b'", message)
        self.assertIn("power_l1 (W)", message)  # what the device has
        self.assertEqual(meter.freshness(), Freshness.DOWN)

    @inlineCallbacks
    def test_a_drop_is_down_then_reconnects_with_backoff(self):
        device, port = self.device()
        source, meter = self.source(port)
        yield self.first_full_reading(source, meter)
        failure = source.when("failure")
        device.drop()
        message = yield failure
        self.assertIn("connection lost", message)
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertEqual(source.state, "disconnected")
        self.assertEqual(meter.details["retry_in"], 0.05)  # reconnect_min (rng 1.0), the first failure

        # Refused connections in a row: the wait doubles up to reconnect_max.
        device.refuse = True
        delays, messages = [], []
        for _ in range(3):
            messages.append((yield source.when("failure")))
            delays.append(meter.details["retry_in"])
        self.assertEqual(delays, [0.1, 0.2, 0.2], messages)
        device.refuse = False
        yield source.when("connected")
        yield source.when("sample")
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        self.assertGreaterEqual(device.connects, 5)

    @inlineCallbacks
    def test_garbage_on_the_wire_is_an_error_not_a_crash(self):
        device, port = self.device()
        source, meter = self.source(port)
        yield self.first_full_reading(source, meter)
        failure = source.when("failure")
        device.garbage(b"\x01\x00\x05garbage-that-is-no-noise-frame")
        message = yield failure
        self.assertIn("connection lost", message)
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        yield source.when("sample")  # reconnected
        failure = source.when("failure")
        device.garbage(b"\x7f\xff\xff")
        message = yield failure
        self.assertIn("protocol error", message)
        self.assertIn("Marker byte invalid", message)
        yield source.when("sample")

    @inlineCallbacks
    def test_unanswered_pings_drop_the_connection(self):
        device, port = self.device()
        source, meter = self.source(port, keepalive=0.1)
        yield source.when("sample")
        device.pong = False
        message = yield source.when("failure")
        self.assertIn("connection lost", message)
        self.assertIn("no answer to pings", message)

    @inlineCallbacks
    def test_nothing_listening(self):
        device, port = self.device()
        yield device.stop()
        source, meter = self.source(port)
        message = yield source.when("failure")
        self.assertEqual(source.state, "failing")
        self.assertIn("connection refused", message.lower())
        self.assertEqual(meter.freshness(), Freshness.DOWN)

    @inlineCallbacks
    def test_stop_says_goodbye(self):
        device, port = self.device()
        source, meter = self.source(port)
        yield source.when("sample")
        conn = device.connections[0]
        lost = device.when("lost")
        yield source.stopService()
        yield lost
        self.assertIn("DisconnectRequest", conn.messages)
        self.assertEqual(source.state, "stopped")

    @inlineCallbacks
    def test_fuzzed_garbage_from_the_device(self):
        """Random bytes, frames with a Noise header and random bodies, plaintext preambles, huge
        lengths, truncated frames: each case ends the connection (by the client, or the device
        dropping a connection stuck on a partial frame), and the source reconnects and reads again;
        nothing escapes as an unhandled error (trial fails a test that logs one)."""
        import random

        rnd = random.Random(19)
        cases = [bytes([rnd.randrange(256) for _ in range(rnd.randrange(1, 64))]) for _ in range(6)]
        for _ in range(6):
            body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40)))
            cases.append(b"\x01" + len(body).to_bytes(2, "big") + body)
        cases += [b"\x00\x05\x19hello", b"\x01\xff\xff" + b"x" * 10, b"\x01\x00", b"\x01\x00\x00",
                  b"\x02" * 3, b"\x01\x00\x10" + bytes(16)]
        device, port = self.device()
        source, meter = self.source(port)
        yield source.when("sample")
        bugs_before = source._said.get("bug")
        for case in cases:
            while source.state != "connected" or not device.connections:
                yield source.when("connected")
            lost = device.when("lost")
            device.garbage(case)
            device.close()  # sent, then closed: a partial frame would wait for more
            yield lost
            yield source.when("sample")
            self.assertEqual(meter.freshness(), Freshness.FRESH)
        self.assertEqual(source._said.get("bug"), bugs_before)

    @inlineCallbacks
    def test_a_hung_device_times_out(self):
        device, port = self.device()
        device.mute = True
        source, meter = self.source(port, timeout=0.3)
        message = yield source.when("failure")
        self.assertIn("no answer within 0.3 s", message)
        self.assertEqual(source.state, "failing")
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        device.mute = False
        yield source.when("sample")  # the next attempt gets an answer
        self.assertEqual(meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_stop_while_connecting(self):
        device, port = self.device()
        device.mute = True
        connected = device.when("connected")
        source, meter = self.source(port)
        yield connected
        lost = device.when("lost")
        yield source.stopService()
        yield lost  # the half-made connection is closed, nothing left running
        self.assertEqual(source.state, "stopped")
        self.assertEqual(device.connections, [])

    @inlineCallbacks
    def test_the_device_says_goodbye(self):
        """A device about to reboot sends DisconnectRequest: down, then back when it is."""
        device, port = self.device()
        source, meter = self.source(port)
        yield self.first_full_reading(source, meter)
        failure = source.when("failure")
        device.goodbye()
        message = yield failure
        self.assertIn("closed the connection", message)
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        yield source.when("sample")
        self.assertEqual(meter.freshness(), Freshness.FRESH)

