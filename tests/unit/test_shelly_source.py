"""A real Shelly as the source (``type: shelly``), the pure parts: Shelly.GetStatus of real
Pro 3EMs (tests/fixtures/shelly) → Readings, NotifyStatus merging, refusals, digest, options."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, parse_config
from meteremu.sources.jsonfields import ValueProblem
from meteremu.sources.shelly.parse import (
    digest_header,
    gen1_reading_of,
    merge_status,
    reading_of,
    ws_auth,
)
from tests.support import fixture_json

CHALLENGE = fixture_json("shelly", "aioshelly_ws_frame_401_auth_challenge_plus2pm.json")


def status(name: str = "aioshelly_gen2_pro3em_fw1.1.0.json") -> dict[str, Any]:
    return copy.deepcopy(fixture_json("shelly", name)["status"])


def options(**source: Any) -> Any:
    data = {"meters": {"m": {"source": {"type": "shelly", "host": "192.168.1.90", **source}}}, "devices": []}
    return parse_config(data, "t.yaml", env={}).meters["m"].source.options


class StatusTests(SynchronousTestCase):
    def test_pro3em_three_phases_and_lifetime_counters(self) -> None:
        reading = reading_of(status(), (), 3.0)
        self.assertEqual(reading.powers(), (375.5, 170.8, 12.7))
        self.assertEqual((reading.phases[0].voltage, reading.phases[0].pf, reading.phases[0].freq), (229.0, 0.76, 50.0))
        self.assertEqual(reading.energy, ((2034616.71, 0.0), (185686.89, 40.7), (369469.8, 985.91)))
        newer = reading_of(status("ha_core_pro_3em_fw1.6.1.json"), ("em:0",), 3.0)
        self.assertEqual(newer.powers(), (2166.2, 3.6, 244.0))

    def test_invert_swaps_power_sign_and_counters(self) -> None:
        reading = reading_of(status(), (), 3.0, invert=True)
        self.assertEqual(reading.powers(), (-375.5, -170.8, -12.7))
        self.assertEqual(reading.energy[1], (40.7, 185686.89))

    def test_single_phase_channels(self) -> None:
        doc = {"em1:0": {"id": 0, "act_power": -120.5, "voltage": 231.0, "current": 0.6, "pf": -0.9, "freq": 50.0},
               "em1data:0": {"id": 0, "total_act_energy": 1000.5, "total_act_ret_energy": 20.0},
               "switch:0": {"id": 0, "apower": 30.0, "voltage": 230.0, "aenergy": {"total": 500.0}}}
        reading = reading_of(doc, (), 1.0)
        self.assertEqual(reading.powers(), (-120.5,))
        self.assertEqual(reading.energy, ((1000.5, 20.0),))
        both = reading_of(doc, ("em1:0", "switch:0"), 1.0)
        self.assertEqual(both.powers(), (-120.5, 30.0))
        self.assertEqual(both.energy, ((1000.5, 20.0), (500.0, 0.0)))

    def test_refusals(self) -> None:
        cases = [
            (lambda s: s["em:0"].pop("b_act_power"), "em:0.b_act_power is missing"),
            (lambda s: s["em:0"].update(a_act_power=None), "em:0.a_act_power is missing"),
            (lambda s: s["em:0"].update(a_act_power="12"), "is not a number"),
            (lambda s: s["em:0"].update(c_act_power=1e7), "beyond max_power"),
            (lambda s: s["em:0"].update(a_voltage=-3), "outside"),
            (lambda s: s["emdata:0"].update(a_total_act_energy=-1), "negative"),
            (lambda s: s.pop("em:0"), "no em, em1, pm1 or switch"),
        ]
        for change, text in cases:
            doc = status()
            change(doc)
            with self.assertRaises(ValueProblem, msg=text) as caught:
                reading_of(doc, (), 1.0)
            self.assertIn(text, str(caught.exception))
        with self.assertRaises(ValueProblem) as caught:
            reading_of(status(), ("em1:2",), 1.0)
        self.assertIn("the device has no em1:2", str(caught.exception))

    def test_notify_status_deltas_merge(self) -> None:
        doc = status()
        merge_status(doc, {"ts": 1.5, "em:0": {"a_act_power": -50.0, "total_act_power": 133.5}})
        self.assertEqual(reading_of(doc, (), 1.0).powers(), (-50.0, 170.8, 12.7))
        self.assertEqual(doc["em:0"]["b_voltage"], 229.0)
        self.assertNotIn("ts", doc)


def gen1(name: str) -> dict[str, Any]:
    return copy.deepcopy(fixture_json("shelly_gen1", name))


class Gen1Tests(SynchronousTestCase):
    def test_shelly_em(self) -> None:
        reading = gen1_reading_of(gen1("status_shelly_em.json"), (), 2.0)
        self.assertEqual(reading.powers(), (-620.34,))
        self.assertEqual((reading.phases[0].voltage, reading.phases[0].pf), (235.68, -0.66))
        self.assertEqual(reading.energy, ((401472.9, 653673.7),))
        both = gen1_reading_of(gen1("status_shelly_em.json"), ("emeter:0", "emeter:1"), 2.0)
        self.assertEqual(both.powers(), (-620.34, 0.0))

    def test_plugs_count_watt_minutes(self) -> None:
        reading = gen1_reading_of(gen1("status_shelly_1pm.json"), (), 2.0)
        self.assertEqual(reading.powers(), (4711.12,))
        self.assertAlmostEqual(reading.energy[0][0], 6472513 / 60)
        self.assertIsNone(gen1_reading_of(gen1("status_shelly_1.json"), (), 2.0).energy)

    def test_refusals(self) -> None:
        doc = gen1("status_shelly_em.json")
        doc["emeters"][0]["is_valid"] = False
        with self.assertRaises(ValueProblem) as caught:
            gen1_reading_of(doc, (), 1.0)
        self.assertIn("is_valid: false", str(caught.exception))
        with self.assertRaises(ValueProblem):
            gen1_reading_of(gen1("status_shelly_em.json"), ("emeter:2",), 1.0)
        with self.assertRaises(ValueProblem):
            gen1_reading_of({"wifi_sta": {}}, (), 1.0)


class AuthTests(SynchronousTestCase):
    def test_digest_header_sha256(self) -> None:
        challenge = {"realm": "shellypro3em-aabbccddeeff", "nonce": "60dc59c6", "qop": "auth", "algorithm": "SHA-256"}
        header = digest_header("GET", "/rpc/Shelly.GetStatus", challenge, "admin", "pw", 1, "c0ffee")
        ha1 = hashlib.sha256(b"admin:shellypro3em-aabbccddeeff:pw").hexdigest()
        ha2 = hashlib.sha256(b"GET:/rpc/Shelly.GetStatus").hexdigest()
        response = hashlib.sha256(f"{ha1}:60dc59c6:00000001:c0ffee:auth:{ha2}".encode()).hexdigest()
        self.assertIn(f'response="{response}"', header)
        self.assertIn("algorithm=SHA-256", header)
        self.assertNotIn('"pw"', header)

    def test_ws_auth_from_the_captured_challenge(self) -> None:
        challenge = json.loads(CHALLENGE["error"]["message"])
        auth = ws_auth(challenge, "admin", "pw", "abc")
        self.assertEqual((auth["realm"], auth["nonce"], auth["algorithm"]),
                         (challenge["realm"], challenge["nonce"], "SHA-256"))
        self.assertEqual(len(auth["response"]), 64)


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        opts = options(password="pw-1")
        self.assertEqual((opts.gen, opts.push, opts.interval, opts.channels), (2, True, 1.0, ()))
        self.assertFalse(options(gen=1).push)
        self.assertNotIn("pw-1", repr(opts))
        self.assertEqual(options(host="s:8080").base("ws"), "ws://s:8080")

    def test_errors(self) -> None:
        for source, key in [({"host": "http://x/"}, "host"), ({"channels": ["em:0", "em1:0"]}, "channels"),
                            ({"channels": ["relay:0"]}, "channels"),
                            ({"channels": ["em1:0", "em1:1", "em1:2", "pm1:0"]}, "channels"),
                            ({"idle_timeout": "1s"}, "idle_timeout"),
                            ({"gen": 1, "mode": "websocket"}, "mode"), ({"gen": 1, "channels": ["em:0"]}, "channels"),
                            ({"gen": 3}, "gen")]:
            with self.assertRaises(ConfigError, msg=source) as caught:
                options(**source)
            self.assertEqual(caught.exception.key, f"meters.m.source.{key}")
