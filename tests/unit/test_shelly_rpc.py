"""The Shelly RPC core and status builders, pure (no sockets).

Shape tests compare every method's result with the real Pro 3EM captures in
tests/fixtures/shelly/ (keys and JSON types); conformance numbers refer to
specs/shelly.md §9.
"""

from __future__ import annotations

import json
import re

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.devices.shelly import jsonfmt
from meteremu.devices.shelly.options import FallbackPolicy, Options
from meteremu.devices.shelly.rpc import CallContext
from tests.support import fixture_json, make_device, sample_reading

CTX = CallContext("test", "127.0.0.1")


REFERENCE = fixture_json("shelly", "ha_core_pro_3em_fw1.6.1.json")


OLDER = fixture_json("shelly", "aioshelly_gen2_pro3em_fw1.1.0.json")


# Deliberate differences from the real device, listed as the issue asks:
# - wifi: the fixtures redact it (config.wifi is a string in fw 1.1.0, and the
#   fw 1.6.1 sta object has only some keys); we serve an Ethernet-only device.
# - location.lat/lon: null (no location is configured) where the capture has numbers.
# - temperature tC/tF: the host's SoC temperature, or null where there is none.
# - auth: we run with auth off, so auth_domain is null (the capture has auth on).
# Fields the device types "string|null" / "number|null": a null on our side
# is the documented "not configured / not available" value.
NULLABLE = {"name", "auth_domain", "ssid", "sta_ip", "ip", "server", "user", "tz", "lat", "lon",
            "tC", "tF"}


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


class ShapeMixin:
    def assertSameShape(self, ours: object, real: object, path: tuple[str, ...]) -> None:
        if ours is None and path[-1] in NULLABLE:
            return
        if isinstance(real, dict):
            self.assertIsInstance(ours, dict, path)
            self.assertEqual(set(ours), set(real), f"keys differ at {'.'.join(path)}")
            for key in real:
                self.assertSameShape(ours[key], real[key], (*path, key))
        else:
            self.assertEqual(json_type(ours), json_type(real), f"type differs at {'.'.join(path)}")


class ShapeTests(ShapeMixin, SynchronousTestCase):
    """Same keys and JSON types as the real fw 1.6.1 device, method by method."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.device = make_device(self.clock)
        self.device.meter.update(sample_reading(self.clock.seconds()))

    def call(self, method: str, **params: object) -> object:
        # Round-trip through the wire format, as a client would see it.
        raw = self.device.core.handle_bytes(
            json.dumps({"id": 1, "method": method, "params": params}).encode(), CTX)
        frame = json.loads(raw)
        self.assertIn("result", frame, frame)
        return frame["result"]

    def test_get_device_info(self) -> None:
        ours = self.call("Shelly.GetDeviceInfo")
        self.assertSameShape(ours, REFERENCE["shelly"], ("shelly",))
        self.assertEqual(list(ours), ["name", "id", "mac", "slot", "model", "gen", "fw_id", "ver",
                                      "app", "auth_en", "auth_domain", "profile"])

    def test_get_status(self) -> None:
        ours = self.call("Shelly.GetStatus")
        wifi_real = REFERENCE["status"]["wifi"]
        self.assertSameShape({k: v for k, v in ours.items() if k != "wifi"},
                             {k: v for k, v in REFERENCE["status"].items() if k != "wifi"}, ("status",))
        self.assertEqual(set(ours["wifi"]), set(wifi_real))

    def test_get_config(self) -> None:
        ours = self.call("Shelly.GetConfig")
        real = REFERENCE["config"]
        self.assertEqual(set(ours), set(real))
        for key in real:
            if key == "wifi":  # redacted in the capture; we serve the sta keys it has
                self.assertEqual(set(ours["wifi"]["sta"]), set(real["wifi"]["sta"]))
                continue
            self.assertSameShape(ours[key], real[key], ("config", key))

    def test_component_methods(self) -> None:
        status, config = REFERENCE["status"], REFERENCE["config"]
        cases = {
            "EM.GetStatus": status["em:0"], "EMData.GetStatus": status["emdata:0"],
            "EM.GetConfig": config["em:0"], "EMData.GetConfig": config["emdata:0"],
            "Temperature.GetStatus": status["temperature:0"],
        }
        for method, real in cases.items():
            self.assertSameShape(self.call(method, id=0), real, (method,))
        for method, real in {"Sys.GetStatus": status["sys"], "Sys.GetConfig": config["sys"],
                             "Cloud.GetStatus": status["cloud"], "MQTT.GetStatus": status["mqtt"],
                             "Ws.GetStatus": status["ws"], "Modbus.GetStatus": status["modbus"],
                             "Eth.GetStatus": status["eth"]}.items():
            self.assertSameShape(self.call(method), real, (method,))
        self.assertSameShape(self.call("WiFi.GetStatus"), OLDER["status"]["wifi"] | {"sta_ip6": []}, ("wifi",))

    def test_em_config_is_what_hoymiles_reads(self) -> None:
        # batteries.md §1: Hoymiles reads EM.GetConfig's id, name (null), blink_mode_selector,
        # phase_selector, monitor_phase_sequence, reverse ({}) and ct_type; the values are the
        # fw 1.6.1 capture's, in its key order, through GetConfig as through EM.GetConfig.
        real = REFERENCE["config"]["em:0"]
        ours = self.call("EM.GetConfig", id=0)
        self.assertEqual(ours, real)
        self.assertEqual(list(ours), ["id", "name", "blink_mode_selector", "phase_selector",
                                      "monitor_phase_sequence", "reverse", "ct_type"])
        self.assertEqual(self.call("Shelly.GetConfig")["em:0"], ours)

    def test_cloud_reads_disabled_as_on_the_real_device(self) -> None:
        # Growatt NOAH/NEXA want the cloud off (batteries.md §1). The fw 1.6.1 capture of a device
        # with the cloud off reports status {connected: false} and config {enable: false, server}:
        # exactly that, nothing added (an "enabled" key in the status is gen1's, served on /status).
        status, config = REFERENCE["status"]["cloud"], REFERENCE["config"]["cloud"]
        self.assertEqual(status, {"connected": False})
        self.assertFalse(config["enable"])
        self.assertEqual(self.call("Cloud.GetStatus"), status)
        self.assertEqual(self.call("Shelly.GetStatus")["cloud"], status)
        self.assertEqual(self.call("Cloud.GetConfig"), config)
        self.assertEqual(self.call("Shelly.GetConfig")["cloud"], config)

    def test_em_key_order_is_the_devices(self) -> None:
        keys = list(self.call("EM.GetStatus", id=0))
        self.assertEqual(keys[:7], ["id", "a_current", "a_voltage", "a_act_power", "a_aprt_power", "a_pf", "a_freq"])
        self.assertEqual(keys[-5:], ["n_current", "total_current", "total_act_power", "total_aprt_power",
                                     "user_calibrated_phase"])


class ConformanceTests(SynchronousTestCase):
    """specs/shelly.md §9 checks that need no socket."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.device = make_device(self.clock)
        self.device.meter.update(sample_reading(self.clock.seconds()))

    def frame(self, request: dict) -> dict:
        return json.loads(self.device.core.handle_bytes(json.dumps(request).encode(), CTX))

    def raw(self, method: str, **params: object) -> str:
        return self.device.core.handle_bytes(
            json.dumps({"id": 1, "method": method, "params": params}).encode(), CTX).decode()

    def test_1_identity(self) -> None:
        info = self.frame({"id": 1, "method": "Shelly.GetDeviceInfo"})["result"]
        self.assertEqual(info["id"], "shellypro3em-" + info["mac"].lower())
        self.assertRegex(info["mac"], r"^[0-9A-F]{12}$")
        self.assertIs(type(info["gen"]), int)
        self.assertEqual(info["gen"], 2)
        self.assertEqual(info["app"], "Pro3EM")
        self.assertTrue(info["model"])
        self.assertRegex(info["fw_id"], r"^\d{8}-\d{6}/")
        self.assertGreaterEqual(info["fw_id"][:8], "20240213")
        self.assertIn(f"/{info['ver']}-", info["fw_id"])
        self.assertIs(info["auth_en"], False)

    def test_2_ids_echoed_with_type(self) -> None:
        for frame_id in (7, "seven", 2**40, 1.5):
            self.assertEqual(self.frame({"id": frame_id, "method": "Sys.GetStatus"})["id"], frame_id)
        self.assertIsInstance(self.frame({"id": "1", "method": "Sys.GetStatus"})["id"], str)

    def test_3_src_dst(self) -> None:
        with_src = self.frame({"id": 1, "src": "user_1", "method": "EM.GetStatus", "params": {"id": 0}})
        self.assertEqual(with_src["src"], self.device.identity.device_id)
        self.assertEqual(with_src["dst"], "user_1")
        without = self.frame({"id": 1, "method": "EM.GetStatus", "params": {"id": 0}})
        self.assertNotIn("dst", without)
        for frame in (with_src, without, self.frame({"id": 1, "method": "Nope.Nope"})):
            self.assertEqual(len({"result", "error"} & set(frame)), 1)
        self.assertNotIn("jsonrpc", with_src)

    def test_4_unknown_method(self) -> None:
        error = self.frame({"id": 1, "method": "EM0.GetStatus"})["error"]
        self.assertEqual(error, {"code": 404, "message": "No handler for EM0.GetStatus"})

    def test_5_component_ids(self) -> None:
        self.assertEqual(self.frame({"id": 1, "method": "EM.GetStatus", "params": {"id": 1}})["error"]["code"], -105)
        self.assertEqual(self.frame({"id": 1, "method": "EM.GetStatus"})["error"],
                         {"code": -103, "message": "Missing required 'id'"})
        self.assertEqual(self.frame({"id": 1, "method": "EMData.GetStatus", "params": {"id": "x"}})["error"]["code"], -103)
        self.assertEqual(self.frame({"id": 1, "method": "EM.GetStatus", "params": [0]})["error"]["code"], -103)

    def test_7_em_keys(self) -> None:
        em = self.frame({"id": 1, "method": "EM.GetStatus", "params": {"id": 0}})["result"]
        for phase in "abc":
            for f in ("current", "voltage", "act_power", "aprt_power", "pf", "freq"):
                self.assertIn(f"{phase}_{f}", em)
        for key in ("n_current", "total_current", "total_act_power", "total_aprt_power", "user_calibrated_phase"):
            self.assertIn(key, em)
        self.assertNotIn("errors", em)
        self.assertNotIn("a_errors", em)

    def test_8_9_10_totals_and_physics(self) -> None:
        em = self.frame({"id": 1, "method": "EM.GetStatus", "params": {"id": 0}})["result"]
        self.assertLessEqual(abs(em["total_act_power"] - sum(em[f"{p}_act_power"] for p in "abc")), 0.15)
        self.assertLessEqual(abs(em["total_aprt_power"] - sum(em[f"{p}_aprt_power"] for p in "abc")), 0.15)
        self.assertLessEqual(abs(em["total_current"] - sum(em[f"{p}_current"] for p in "abc")), 0.003)
        for p in "abc":
            self.assertGreaterEqual(em[f"{p}_aprt_power"], abs(em[f"{p}_act_power"]) - 0.1)
            self.assertLessEqual(abs(em[f"{p}_pf"]), 1)
            self.assertGreaterEqual(em[f"{p}_current"], 0)
            if em[f"{p}_current"] > 0.1:
                self.assertLessEqual(abs(em[f"{p}_aprt_power"] - em[f"{p}_voltage"] * em[f"{p}_current"]),
                                     em[f"{p}_aprt_power"] * 0.01)
        self.assertLess(em["c_act_power"], 0)  # the sample exports on phase C

    def test_11_number_text(self) -> None:
        self.device.meter.update(sample_reading(self.clock.seconds() + 1, powers=(0.0, 12.0, -300.0)))
        text = self.raw("EM.GetStatus", id=0)
        for key, places in (("a_current", 3), ("a_voltage", 1), ("a_act_power", 1), ("b_act_power", 1),
                            ("c_act_power", 1), ("a_pf", 2), ("a_freq", 1), ("total_current", 3),
                            ("total_act_power", 3), ("total_aprt_power", 3)):
            self.assertRegex(text, rf'"{key}":-?\d+\.\d{{{places}}}[,}}]')
        self.assertIn('"a_act_power":0.0,', text)
        self.assertIn('"b_act_power":12.0,', text)
        self.assertEqual(re.findall(r'"(\w+)":-?\d+[,}]', text), ["id", "id"])  # frame and result ids only
        energy = self.raw("EMData.GetStatus", id=0)
        self.assertRegex(energy, r'"a_total_act_ret_energy":\d+\.\d{2}[,}]')
        self.assertRegex(energy, r'"total_act":\d+\.\d{2}[,}]')

    def test_12_neutral_null(self) -> None:
        em = self.frame({"id": 1, "method": "EM.GetStatus", "params": {"id": 0}})["result"]
        self.assertIsNone(em["n_current"])

    def test_13_14_emdata_sums_and_monotonic(self) -> None:
        previous = None
        for _ in range(1, 6):
            self.clock.advance(1)
            self.device.meter.update(sample_reading(self.clock.seconds()))
            data = self.frame({"id": 1, "method": "EMData.GetStatus", "params": {"id": 0}})["result"]
            self.assertLessEqual(abs(data["total_act"] - sum(data[f"{p}_total_act_energy"] for p in "abc")), 0.02)
            self.assertLessEqual(abs(data["total_act_ret"] - sum(data[f"{p}_total_act_ret_energy"] for p in "abc")), 0.02)
            if previous:
                for key, value in data.items():
                    self.assertGreaterEqual(value, previous[key], key)
            previous = data
        # Phase A imports, C exports (sample powers): only those counters grew.
        self.assertGreater(previous["a_total_act_energy"], 0)
        self.assertEqual(previous["a_total_act_ret_energy"], 0)
        self.assertGreater(previous["c_total_act_ret_energy"], 0)
        self.assertEqual(previous["c_total_act_energy"], 0)

    def test_18_aggregates(self) -> None:
        status = self.frame({"id": 1, "method": "Shelly.GetStatus"})["result"]
        em = self.frame({"id": 1, "method": "EM.GetStatus", "params": {"id": 0}})["result"]
        self.assertEqual(status["em:0"], em)
        for key in ("sys", "em:0", "emdata:0"):
            self.assertIn(key, status)
        config = self.frame({"id": 1, "method": "Shelly.GetConfig"})["result"]
        self.assertIn("name", config["sys"]["device"])
        self.assertEqual(config["emdata:0"], {})
        self.assertIn("em:0", config)

    def test_19_get_components(self) -> None:
        result = self.frame({"id": 1, "method": "Shelly.GetComponents", "params": {"dynamic_only": True}})["result"]
        self.assertEqual(result["components"], [])
        self.assertEqual(set(result), {"components", "cfg_rev", "offset", "total"})
        full = self.frame({"id": 1, "method": "Shelly.GetComponents",
                           "params": {"include": ["status"], "keys": ["em:0", "sys"]}})["result"]
        self.assertEqual([c["key"] for c in full["components"]], ["em:0", "sys"])
        self.assertLessEqual(len(full["components"]), full["total"])
        self.assertIn("total_act_power", full["components"][0]["status"])

    def test_20_list_methods(self) -> None:
        methods = self.frame({"id": 1, "method": "Shelly.ListMethods"})["result"]["methods"]
        required = ["Shelly.GetDeviceInfo", "Shelly.GetStatus", "Shelly.GetConfig", "Shelly.GetComponents",
                    "Shelly.ListMethods", "EM.GetStatus", "EM.GetConfig", "EMData.GetStatus", "EMData.GetConfig",
                    "EM1.GetStatus", "EM1.GetConfig", "EM1Data.GetStatus", "Sys.GetStatus", "Sys.GetConfig",
                    "WiFi.GetStatus", "Eth.GetStatus", "Cloud.GetStatus", "MQTT.GetStatus", "Ws.GetStatus",
                    "Modbus.GetStatus"]
        for name in required:
            self.assertIn(name, methods)
        for name in methods:
            reply = self.frame({"id": 1, "method": name, "params": {"id": 0}})
            self.assertNotEqual(reply.get("error", {}).get("code"), 404, name)

    def test_method_names_case_insensitive(self) -> None:
        self.assertIn("result", self.frame({"id": 1, "method": "em.getstatus", "params": {"id": 0}}))

    def test_frame_errors_are_well_formed(self) -> None:
        for raw in (b"", b"garbage", b"\xff\xfe", b"[1,2]", b"42", b'{"id":{},"method":"x"}',
                    b"[" * 5000 + b"]" * 5000, b'{"id":1,"method":5}', b'{"id":true,"method":"x"}'):
            reply = json.loads(self.device.core.handle_bytes(raw, CTX))
            self.assertIn("error", reply, raw[:20])
            self.assertIsInstance(reply["error"]["code"], int)

    def test_frame_without_id_is_a_notification(self) -> None:
        self.assertIsNone(self.device.core.handle_bytes(b'{"method":"EM.GetStatus","params":{"id":0}}', CTX))


class MonophaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.device = make_device(self.clock, Options(meter="grid", profile="monophase"))
        self.device.meter.update(sample_reading(self.clock.seconds()))

    def call(self, method: str, params: dict | None = None) -> dict:
        return json.loads(self.device.core.handle_bytes(
            json.dumps({"id": 1, "method": method, "params": params or {}}).encode(), CTX))

    def test_16_profile(self) -> None:
        self.assertEqual(self.call("EM.GetStatus", {"id": 0})["error"]["code"], -105)
        self.assertEqual(self.call("EMData.GetStatus", {"id": 0})["error"]["code"], -105)
        self.assertEqual(self.call("Shelly.GetDeviceInfo")["result"]["profile"], "monophase")
        self.assertEqual(self.call("Sys.GetConfig")["result"]["device"]["profile"], "monophase")
        status = self.call("Shelly.GetStatus")["result"]
        for i in range(3):
            self.assertIn(f"em1:{i}", status)
            self.assertIn(f"em1data:{i}", status)
        self.assertNotIn("em:0", status)
        self.assertEqual(self.call("EM1.GetStatus", {"id": 3})["error"]["code"], -105)

    def test_17_em1_keys(self) -> None:
        em1 = self.call("EM1.GetStatus", {"id": 2})["result"]
        self.assertEqual(list(em1), ["id", "current", "voltage", "act_power", "aprt_power", "pf", "freq", "calibration"])
        self.assertEqual(em1["act_power"], -244.0)
        data = self.call("EM1Data.GetStatus", {"id": 0})["result"]
        self.assertEqual(set(data), {"id", "total_act_energy", "total_act_ret_energy"})
        raw = self.device.core.handle_bytes(b'{"id":1,"method":"EM1.GetStatus","params":{"id":1}}', CTX).decode()
        self.assertRegex(raw, r'"pf":\d\.\d\d,')


class StalePolicyTests(SynchronousTestCase):
    """design.md §4: error (default), hold, fallback; never invented zeros."""

    def device(self, on_stale: object) -> object:
        clock = Clock()
        clock.advance(1_700_000_000)
        device = make_device(clock, Options(meter="grid", on_stale=on_stale), stale_after=5)
        device.meter.update(sample_reading(clock.seconds()))
        clock.advance(6)
        return device

    def em(self, device: object) -> dict:
        return json.loads(device.core.handle_bytes(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', CTX))

    def test_error(self) -> None:
        device = self.device("error")
        reply = self.em(device)
        self.assertEqual(reply["error"]["code"], -114)
        self.assertIn("stale", reply["error"]["message"])
        status = json.loads(device.core.handle_bytes(b'{"id":1,"method":"Shelly.GetStatus"}', CTX))["result"]
        self.assertIsNone(status["em:0"]["total_act_power"])
        self.assertEqual(status["em:0"]["errors"], ["power_meter_failure"])
        self.assertIsInstance(status["emdata:0"]["total_act"], float)

    def test_down_reason_reported(self) -> None:
        device = self.device("error")
        device.meter.report_failure("connection refused")
        self.assertIn("down: connection refused", self.em(device)["error"]["message"])

    def test_hold(self) -> None:
        self.assertEqual(self.em(self.device("hold"))["result"]["a_act_power"], 2166.2)

    def test_fallback(self) -> None:
        result = self.em(self.device(FallbackPolicy(fallback=-150.0)))["result"]
        self.assertEqual(result["total_act_power"], -150.0)
        self.assertEqual(result["a_act_power"], -150.0)
        self.assertEqual(result["b_act_power"], 0.0)

    def test_hold_without_any_reading_errors(self) -> None:
        clock = Clock()
        device = make_device(clock, Options(meter="grid", on_stale="hold"))
        self.assertEqual(self.em(device)["error"]["code"], -114)


class ResultCacheTests(SynchronousTestCase):
    """EM(1).GetStatus is built and encoded once per reading and scale."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.device = make_device(self.clock)
        self.device.meter.update(sample_reading(self.clock.seconds()))

    def em_bytes(self) -> bytes:
        return self.device.core.handle_bytes(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', CTX)

    def test_cached_text_equals_a_fresh_encoding(self) -> None:
        from meteremu.devices.shelly import status as st

        first, second = self.em_bytes(), self.em_bytes()
        self.assertEqual(first, second)
        fresh = st.em_status(self.device.meter.latest)
        self.assertEqual(json.loads(first)["result"], fresh)
        self.assertIn(b'"result":' + jsonfmt.dumpb(fresh) + b"}", first)

    def test_same_object_until_the_reading_changes(self) -> None:
        reading = self.device.meter.latest
        cached = self.device.em_result(reading, 1.0)
        self.assertIs(self.device.em_result(reading, 1.0), cached)
        self.assertIsNot(self.device.em_result(reading, 0.5), cached)
        self.assertEqual(self.device.em_result(reading, 0.5)["a_act_power"], round(2166.2 * 0.5, 1))
        self.clock.advance(1)
        self.device.meter.update(sample_reading(self.clock.seconds(), powers=(100.0, 0.0, 0.0)))
        before = self.em_bytes()
        self.assertEqual(json.loads(before)["result"]["a_act_power"], 100.0)
        self.assertEqual(json.loads(before)["result"]["total_act_power"], 100.0)

    def test_minimal_and_em1_shapes_are_cached_separately(self) -> None:
        reading = self.device.meter.latest
        full = self.device.em_result(reading, 1.0)
        minimal = self.device.em_result(reading, 1.0, minimal=True)
        self.assertEqual(list(minimal), ["a_act_power", "b_act_power", "c_act_power", "total_act_power"])
        self.assertEqual(len(full), 24)
        channel = self.device.em1_result(reading, 2, 1.0)
        self.assertEqual(channel["act_power"], -244.0)
        self.assertEqual(dict(self.device.em1_result(reading, 2, 1.0, minimal=True)), {"id": 2, "act_power": -244.0})

    def test_cached_results_are_read_only(self) -> None:
        cached = self.device.em_result(self.device.meter.latest, 1.0)
        with self.assertRaises(TypeError):
            cached["a_act_power"] = 1.0
        with self.assertRaises(TypeError):
            cached.update(a_act_power=1.0)
        with self.assertRaises(TypeError):
            del cached["id"]
        copy = dict(cached)
        copy["a_act_power"] = 1.0  # a copy is an ordinary dict
        self.assertEqual(cached["a_act_power"], 2166.2)

    def test_cache_is_bounded(self) -> None:
        from meteremu.devices.shelly.device import MAX_CACHED

        reading = self.device.meter.latest
        for i in range(MAX_CACHED * 2):
            self.assertEqual(self.device.em_result(reading, 1.0 / (i + 1))["id"], 0)
        self.assertEqual(len(self.device._cache), MAX_CACHED)


class JsonFormatTests(SynchronousTestCase):
    def test_encoded_is_written_verbatim(self) -> None:
        value = jsonfmt.Encoded({"a_act_power": 12, "id": 0})
        self.assertEqual(value.json, '{"a_act_power":12.0,"id":0}')
        self.assertEqual(jsonfmt.dumps({"id": 7, "result": value}), '{"id":7,"result":{"a_act_power":12.0,"id":0}}')
        self.assertEqual(jsonfmt.dumps(value), value.json)

    def test_decimals_memo_is_bounded(self) -> None:
        for i in range(jsonfmt._KEYS_MAX + 10):
            jsonfmt.decimals_for(f"key{i}_voltage")
        self.assertLessEqual(len(jsonfmt._KEYS), jsonfmt._KEYS_MAX)
        self.assertEqual(jsonfmt.decimals_for("zz_unseen_voltage"), 1)
        self.assertIsNone(jsonfmt.decimals_for("zz_unseen"))

    def test_fixed_decimals(self) -> None:
        self.assertEqual(jsonfmt.dumps({"b_pf": 0.5, "a_act_power": 12, "total_act": 0, "a_current": 0.02}),
                         '{"b_pf":0.50,"a_act_power":12.0,"total_act":0.00,"a_current":0.020}')

    def test_never_negative_zero(self) -> None:
        self.assertEqual(jsonfmt.dumps({"a_act_power": -0.04}), '{"a_act_power":0.0}')
        self.assertEqual(jsonfmt.dumps({"a_act_power": -0.06}), '{"a_act_power":-0.1}')

    def test_non_finite_is_null(self) -> None:
        self.assertEqual(jsonfmt.dumps({"a_voltage": float("nan"), "x": float("inf")}), '{"a_voltage":null,"x":null}')

    def test_other_values(self) -> None:
        self.assertEqual(jsonfmt.dumps({"id": 3, "ok": True, "n": None, "s": "é\"", "l": [1, 2.5]}),
                         '{"id":3,"ok":true,"n":null,"s":"é\\"","l":[1,2.5]}')
        self.assertEqual(json.loads(jsonfmt.dumps({"s": "é"})), {"s": "é"})

    def test_rejects_unknown_types(self) -> None:
        self.assertRaises(TypeError, jsonfmt.dumps, {"x": object()})

    def test_ts_two_decimals(self) -> None:
        self.assertTrue(re.fullmatch(r'\{"ts":\d+\.\d\d\}', jsonfmt.dumps({"ts": 1736604020.0612})))


class GuardsAndObserversTests(SynchronousTestCase):
    """Guards may refuse a call; observers only watch and can never fail one."""

    def setUp(self) -> None:
        self.device = make_device(Clock())
        self.device.meter.update(sample_reading(1.0))
        self.core = self.device.core

    def test_a_guard_refuses_and_observers_do_not_hear_of_it(self) -> None:
        from meteremu.devices.shelly.rpc import RpcError

        seen: list[str] = []

        def refuse(method: str, ctx: CallContext) -> None:
            if method == "EM.GetStatus":
                raise RpcError(-108, "no")

        self.core.guards.append(refuse)
        self.core.observers.append(lambda method, ctx: seen.append(method))
        answer = json.loads(self.core.handle_bytes(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', CTX))
        self.assertEqual(answer["error"]["code"], -108)
        self.core.call("Sys.GetStatus", {}, CTX)
        self.assertEqual(seen, ["Sys.GetStatus"])

    def test_a_failing_observer_is_logged_once_and_the_call_is_answered(self) -> None:
        def broken(*args: object) -> None:
            raise KeyError("metrics bug")

        self.core.observers.append(broken)
        self.core.error_observers.append(broken)
        for _ in range(3):
            self.assertEqual(self.core.call("EM.GetStatus", {"id": 0}, CTX)["id"], 0)
        answer = json.loads(self.core.handle_bytes(b'{"id":2,"method":"Nope"}', CTX))
        self.assertEqual(answer["error"]["code"], 404)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_the_client_tracker_is_a_guard(self) -> None:
        self.assertIn(self.device.clients.observe, self.core.guards)
        self.assertNotIn(self.device.clients.observe, self.core.observers)
