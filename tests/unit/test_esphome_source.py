"""The esphome source's pure parts: options, entity binding, states → Readings, failure verdicts.

The I/O runs against a fake device in tests/integration/test_esphome_source.py.
"""

from __future__ import annotations

import math
import struct
from typing import Any
from unittest import mock

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, parse_config
from meteremu.meter import Freshness, Meter
from meteremu.reading import PhaseReading, Reading
from meteremu.sources.esphome.errors import redact, verdict
from meteremu.sources.esphome.options import (
    EsphomeOptions,
    EsphomeSensor,
    EsphomeValues,
    key_problem,
)
from meteremu.sources.esphome.parse import (
    Entity,
    MatchError,
    SensorStates,
    float32_decimal,
    match_entities,
)

KEY = "px7tsbK3C7bpXHr2OevEV2ZMg/FrNBw2+O2pNPbedtA="
ENTITIES = [Entity(1, "power_l1", "Power L1", "W"), Entity(2, "power_l2", "Power L2", "kW"),
            Entity(3, "power_l3", "Power L3", "W"), Entity(4, "energy_in_t1", "Energy In T1", "kWh"),
            Entity(5, "energy_in_t2", "Energy In T2", "Wh"), Entity(6, "voltage_l1", "Voltage L1", "V"),
            Entity(7, "raw_power", "Raw Power", "")]


def f32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def config(source: dict[str, Any]) -> Any:
    return parse_config({"meters": {"m": {"source": {"type": "esphome", **source}}}}, "conf.yaml", env={})


class OptionsTests(SynchronousTestCase):
    def test_a_minimal_config(self) -> None:
        options = config({"host": "192.168.1.30", "encryption_key": KEY,
                          "values": {"a_power": "power_l1", "b_power": {"sensor": "Power L2", "unit": "kW"}}})
        source = options.meters["m"].source.options
        self.assertEqual(source.address(), ("192.168.1.30", 6053))
        self.assertEqual([(k, i.sensor, i.unit) for k, _, i in source.values.items()],
                         [("a_power", "power_l1", None), ("b_power", "Power L2", "kW")])
        self.assertNotIn(KEY, repr(source))

    def test_errors_name_the_key_and_never_repeat_the_key(self) -> None:
        cases = {
            "encryption_key": {"encryption_key": KEY[:-4] + "AAA="[:3]},
            "encryption_key ": {"encryption_key": "c2hvcnQga2V5"},
            "values.power": {"values": {"power": "a", "a_power": "b"}},
            "values.a_voltage.unit": {"values": {"power": "p", "a_voltage": {"sensor": "v", "unit": "W"}}},
            "port": {"port": 70000},
            "max_age": {"max_age": "0s"},
            "reconnect_max": {"reconnect_min": "10s", "reconnect_max": "1s"},
            "host": {"host": "http://x/"},
        }
        for key, change in cases.items():
            body = {"host": "192.168.1.30", "values": {"power": "grid_power"}, **change}
            with self.assertRaises(ConfigError, msg=key) as caught:
                config(body)
            self.assertIn(key.strip(), caught.exception.key)
            secret = change.get("encryption_key")
            if secret:
                self.assertNotIn(secret, str(caught.exception))
                self.assertNotIn(secret[:8], str(caught.exception))

    def test_key_shape(self) -> None:
        self.assertIsNone(key_problem(KEY))
        self.assertIsNone(key_problem(KEY[:20] + "\n" + KEY[20:]))  # wrapped in YAML
        self.assertIn("decodes to 9 bytes", key_problem("c2hvcnQga2V5") or "")
        self.assertIn("base64 of 32 bytes", key_problem("not base64 at all!") or "")
        self.assertIn("base64 of 32 bytes", key_problem("ключ") or "")

    def test_without_the_extra_the_type_is_refused(self) -> None:
        with mock.patch("importlib.util.find_spec", return_value=None):
            with self.assertRaises(ConfigError) as caught:
                config({"host": "192.168.1.30", "values": {"power": "grid_power"}})
        self.assertIn("pip install 'meteremu[esphome]'", str(caught.exception))


class MatchTests(SynchronousTestCase):
    def test_by_object_id_name_or_folded_name_with_device_units(self) -> None:
        values = EsphomeValues(a_power="power_l1", b_power="Power L2", c_power="POWER-L3",
                               energy_import=("energy_in_t1", "Energy In T2"), a_voltage="voltage_l1")
        bound = {(b.quantity, b.index): (b.entity.key, b.factor, b.unit) for b in match_entities(values, ENTITIES)}
        self.assertEqual(bound, {("a_power", 0): (1, 1.0, "W"), ("b_power", 0): (2, 1000.0, "kW"),
                                 ("c_power", 0): (3, 1.0, "W"), ("energy_import", 0): (4, 1000.0, "kWh"),
                                 ("energy_import", 1): (5, 1.0, "Wh"), ("a_voltage", 0): (6, 1.0, "V")})

    def test_config_unit_scale_and_invert_win(self) -> None:
        values = EsphomeValues(power=EsphomeSensor("raw_power", unit="kW", scale=0.5, invert=True))
        (b,) = match_entities(values, ENTITIES)
        self.assertEqual((b.factor, b.unit), (-500.0, "kW"))

    def test_a_unitless_power_is_watts_a_unitless_counter_is_refused(self) -> None:
        (b,) = match_entities(EsphomeValues(power="raw_power"), ENTITIES)
        self.assertEqual((b.factor, b.unit), (1.0, "W"))
        with self.assertRaises(MatchError) as caught:
            match_entities(EsphomeValues(power="power_l1", energy_import="raw_power"), ENTITIES)
        self.assertIn("declares no unit; set unit: kWh", str(caught.exception))

    def test_misfits_are_named_together(self) -> None:
        values = EsphomeValues(a_power="power_x", b_power="voltage_l1")
        with self.assertRaises(MatchError) as caught:
            match_entities(values, ENTITIES)
        text = str(caught.exception)
        self.assertIn("a_power: no sensor 'power_x'", text)
        self.assertIn("b_power: sensor 'voltage_l1': the device declares 'V'", text)
        self.assertIn("the device has power_l1 (W), power_l2 (kW)", text)

    def test_an_ambiguous_name(self) -> None:
        twins = [Entity(1, "power", "Power"), Entity(2, "power_2", "Power")]
        with self.assertRaises(MatchError) as caught:
            match_entities(EsphomeValues(power="Power"), twins)
        self.assertIn("2 sensors answer to 'Power' (power, power_2)", str(caught.exception))
        (b,) = match_entities(EsphomeValues(power="power_2"), twins)
        self.assertEqual(b.entity.key, 2)


class StatesTests(SynchronousTestCase):
    def states(self, values: EsphomeValues, **kw: Any) -> SensorStates:
        settings = {"max_power": 100000.0, "invert": False, "max_age": 10.0, **kw}
        return SensorStates(match_entities(values, ENTITIES), **settings)

    def test_a_reading_once_every_power_is_known(self) -> None:
        s = self.states(EsphomeValues(a_power="power_l1", b_power="power_l2", c_power="power_l3",
                                      energy_import=("energy_in_t1", "energy_in_t2")))
        self.assertIsNone(s.state(1, 100.0, False, 1.0, 1000.0).reading)
        self.assertIsNone(s.state(2, f32(0.3), False, 1.0, 1000.0).reading)
        self.assertEqual(s.problem(1.0), "waiting for a state of sensor power_l3 (c_power)")
        reading = s.state(3, -50.0, False, 1.0, 1000.0).reading
        assert reading is not None
        self.assertEqual([p.act_power for p in reading.phases], [100.0, 300.0, -50.0])
        self.assertIsNone(reading.energy)  # not every tariff yet: no partial sum
        s.state(4, f32(12345.6), False, 1.0, 1000.0)
        reading = s.state(5, 400.0, False, 1.0, 1000.0).reading
        assert reading is not None and reading.energy is not None
        self.assertEqual(reading.energy[0], (12345600.0 + 400.0, 0.0))
        self.assertGreater(reading.measured_at, 1000.0)  # nudged past the earlier sample of the same instant
        self.assertIsNone(s.problem(5.0))
        self.assertIn("no state of sensor power_l1 (a_power) for 11.0 s (max_age 10 s)", s.problem(12.0) or "")

    def test_nan_and_out_of_range_are_never_data(self) -> None:
        s = self.states(EsphomeValues(power="power_l1", a_voltage="voltage_l1"), max_power=5000.0)
        self.assertIsNotNone(s.state(1, 100.0, False, 1.0, 1.0).reading)
        for value, missing, why in ((math.nan, True, "has no value"), (math.nan, False, "has no value"),
                                    (math.inf, False, "has no value"), (6000.0, False, "out of range")):
            outcome = s.state(1, value, missing, 2.0, 2.0)
            self.assertIsNone(outcome.reading)
            self.assertIn(why, outcome.refused or "")
            self.assertIn(why, s.problem(2.0) or "")
        outcome = s.state(6, 5000.0, False, 3.0, 3.0)  # a voltage beyond 1000 V
        self.assertIn("voltage_l1 (a_voltage) = 5000 V is out of range", outcome.refused or "")
        outcome = s.state(1, 10.0, False, 4.0, 4.0)
        assert outcome.reading is not None
        self.assertEqual(outcome.reading.phases[0].voltage, 230.0)  # the refused voltage is not served
        self.assertIsNone(s.problem(4.0))

    def test_pending_until_every_power_sensor_was_heard(self) -> None:
        s = self.states(EsphomeValues(a_power="power_l1", b_power="power_l2", a_voltage="voltage_l1"))
        self.assertTrue(s.pending())
        s.state(1, math.nan, True, 1.0, 1.0)  # heard, without a value: no longer pending, but a problem
        self.assertTrue(s.pending())
        s.state(2, 1.0, False, 1.0, 1.0)
        self.assertFalse(s.pending())
        self.assertIn("power_l1 (a_power) has no value", s.problem(1.0) or "")
        self.assertNotIn("voltage", s.problem(100.0) or "")  # only power sensors decide freshness

    def test_the_shared_range_checks(self) -> None:
        s = self.states(EsphomeValues(power="power_l1", energy_import="energy_in_t1"), max_power=5000.0)
        self.assertIn("W is beyond max_power (5000 W)", s.state(1, 6000.0, False, 1.0, 1.0).refused or "")
        self.assertIn("a lifetime counter is not", s.state(4, -1.0, False, 1.0, 1.0).refused or "")
        reading = s.state(1, 10.0, False, 2.0, 2.0).reading
        assert reading is not None
        self.assertIsNone(reading.energy)  # the refused counter is not served

    def test_other_entities_and_invert(self) -> None:
        s = self.states(EsphomeValues(power="power_l1"), invert=True)
        self.assertIsNone(s.state(42, 1.0, False, 1.0, 1.0).reading)
        reading = s.state(1, 250.0, False, 1.0, 1.0).reading
        assert reading is not None
        self.assertEqual(reading.phases[0].act_power, -250.0)
        s.clear()
        self.assertFalse(s.ready())

    def test_float32_read_as_meant(self) -> None:
        for meant in (12345.6, 0.3, -0.8, 230.1, 1200.5, 1e-7, 99999.99):
            self.assertEqual(float32_decimal(f32(meant)), meant)
        self.assertTrue(math.isnan(float32_decimal(math.nan)))
        self.assertEqual(float32_decimal(1e300), 1e300)  # not a float32: left as it is


class VerdictTests(SynchronousTestCase):
    def test_aioesphomeapi_errors(self) -> None:
        import aioesphomeapi.core as core

        where = "ESPHome 192.168.1.30:6053"
        cases = [
            (core.InvalidEncryptionKeyAPIError("x: Invalid encryption key", "meter", "aa"), "bad key", True,
             "refused the encryption key"),
            (core.EncryptionPlaintextAPIError("x"), "bad key", True, "has no API encryption"),
            (core.RequiresEncryptionAPIError("x"), "bad key", True, "requires API encryption"),
            (core.EncryptionHelloAPIError("x"), "failing", False, "dropped the connection at the encrypted hello"),
            (core.EncryptionErrorAPIError("x"), "failing", False, "failed to decrypt"),
            (core.InvalidAuthAPIError("Invalid password!"), "bad password", True, "refused the password"),
            (core.BadNameAPIError("Expected 'a' but server sent a different name: 'b'", "b"), "wrong device",
             True, "server sent a different name: 'b'"),
            (core.TimeoutAPIError("x"), "failing", False, "no answer within 5 s"),
            (TimeoutError(), "failing", False, "no answer within 5 s"),
            (core.ProtocolAPIError("127.0.0.1: Marker byte invalid: 127"), "failing", False,
             "protocol error (Marker byte invalid: 127)"),
            (MatchError("b_power: no sensor 'x'"), "sensors missing", True, "b_power: no sensor 'x'"),
            (ValueError("odd"), "failing", False, "ValueError: odd"),
        ]
        for exc, state, permanent, text in cases:
            judged = verdict(exc, where, 5.0)
            self.assertEqual((judged.state, judged.permanent), (state, permanent), repr(exc))
            self.assertIn(text, judged.message)
            self.assertTrue(judged.message.startswith(where))
        self.assertTrue(verdict(ValueError("odd"), where, 5.0).unexpected)

    def test_socket_errors_say_what_happened(self) -> None:
        import aioesphomeapi.core as core

        inner = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 6053)")
        try:
            raise core.SocketAPIError("Error connecting to [AddrInfo(family=2, …)]: …") from inner
        except core.SocketAPIError as exc:
            self.assertEqual(verdict(exc, "E", 1.0).message, "E: connection refused")
        unreachable = OSError(113, "No route to host")
        wrapped = core.SocketAPIError("Error connecting")
        wrapped.__cause__ = unreachable
        self.assertEqual(verdict(wrapped, "E", 1.0).message, "E: No route to host")

    def test_redact(self) -> None:
        self.assertEqual(redact(f"a {KEY} b hunter22", (KEY, "hunter22", None)), "a *** b ***")
        self.assertEqual(redact("k", ("",)), "k")


class ExpireTests(SynchronousTestCase):
    def test_expire_is_stale_now_until_new_data(self) -> None:
        clock = Clock()
        clock.advance(100)
        meter = Meter("m", clock, stale_after=60.0)
        meter.update(Reading(phases=(PhaseReading.from_power(10.0),), measured_at=100.0))
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        meter.expire()
        self.assertEqual(meter.freshness(), Freshness.STALE)
        meter.alive()
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        meter.expire()
        meter.report_failure("gone", down=True)
        self.assertEqual(meter.freshness(), Freshness.DOWN)


class ValuesValidateTests(SynchronousTestCase):
    def test_validate(self) -> None:
        self.assertEqual(EsphomeOptions(host="h", values=EsphomeValues(power="p")).validate(), [])
        self.assertIn(("scale", "a finite number other than 0"), EsphomeSensor("p", scale=0.0).validate())
