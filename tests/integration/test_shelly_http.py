"""The Shelly HTTP device against a real listener on port 0 (spec §2.2, §9)."""

from __future__ import annotations

import json

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import HTTPClient, start_app, test_config

# interval 1h: the simulator samples once at start, so values stay put while
# the four request forms are compared.
SIM = {"grid": {"source": {"type": "simulator", "interval": "1h", "start_time": "12:00", "seed": 3}}}


class HTTPFormsTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.app = yield start_app(self, test_config(self.mktemp(), meters=SIM))
        self.base = f"http://127.0.0.1:{self.app.http_port()}"
        self.http = HTTPClient(self)

    @inlineCallbacks
    def json_get(self, path, expect=200):
        response, body = yield self.http.get(self.base + path)
        self.assertEqual(response.code, expect, body)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        return json.loads(body), body

    @inlineCallbacks
    def test_four_forms_agree(self):
        get_form, raw = yield self.json_get("/rpc/EM.GetStatus?id=0")
        response, body = yield self.http.post(self.base + "/rpc/EM.GetStatus", b'{"id":0}')
        post_form = json.loads(body)
        response, body = yield self.http.post(
            self.base + "/rpc", b'{"id":9,"src":"test","method":"EM.GetStatus","params":{"id":0}}')
        frame = json.loads(body)
        query_form, _ = yield self.json_get("/rpc?method=EM.GetStatus&id=0")
        self.assertEqual(get_form, post_form)
        self.assertEqual(get_form, frame["result"])
        self.assertEqual(get_form, query_form)
        self.assertEqual(frame["id"], 9)
        self.assertEqual(frame["dst"], "test")
        self.assertEqual(frame["src"], self.app.devices[0].identity.device_id)
        self.assertLess(get_form["total_act_power"], 0)  # noon: the simulated PV exports
        self.assertRegex(raw.decode(), r'"total_act_power":-\d+\.\d{3},')

    @inlineCallbacks
    def test_shelly_equals_device_info(self):
        shelly, _ = yield self.json_get("/shelly")
        info, _ = yield self.json_get("/rpc/Shelly.GetDeviceInfo")
        self.assertEqual(shelly, info)
        self.assertEqual(shelly["id"], "shellypro3em-" + shelly["mac"].lower())

    @inlineCallbacks
    def test_unknown_query_keys_ignored(self):
        status, _ = yield self.json_get("/rpc/Shelly.GetStatus?esp")
        self.assertIn("em:0", status)
        em, _ = yield self.json_get("/rpc/EM.GetStatus?esp&id=0")
        self.assertIn("a_act_power", em)

    @inlineCallbacks
    def test_evcc_posts_a_frame_to_the_method_path(self):
        response, body = yield self.http.post(
            self.base + "/rpc/Shelly.GetStatus", b'{"id":1,"on":false,"src":"evcc","method":"Shelly.GetStatus"}')
        self.assertEqual(response.code, 200)
        self.assertIn("emdata:0", json.loads(body))

    @inlineCallbacks
    def test_errors(self):
        body, _ = yield self.json_get("/rpc/EM0.GetStatus", expect=404)
        self.assertEqual(body, {"code": 404, "message": "No handler for EM0.GetStatus"})
        body, _ = yield self.json_get("/rpc/EM.GetStatus", expect=400)
        self.assertEqual(body["code"], -103)
        body, _ = yield self.json_get("/rpc/EM.GetStatus?id=1", expect=404)
        self.assertEqual(body["code"], -105)
        body, _ = yield self.json_get("/rpc?foo=1", expect=400)
        self.assertEqual(body["code"], -103)
        response, raw = yield self.http.post(self.base + "/rpc/EM.GetStatus", b"{not json")
        self.assertEqual(response.code, 400)
        self.assertIn("code", json.loads(raw))
        response, raw = yield self.http.post(self.base + "/rpc", b"\xff\xfe garbage")
        self.assertEqual(json.loads(raw)["error"]["code"], -32700)

    @inlineCallbacks
    def test_oversize_body_is_refused(self):
        response, raw = yield self.http.post(self.base + "/rpc", b'{"id":1,"method":"x","pad":"' + b"a" * 70000 + b'"}')
        self.assertEqual(json.loads(raw)["error"]["code"], -32700)

    @inlineCallbacks
    def test_stale_meter_errors_with_503(self):
        self.app.meters["grid"].report_failure("upstream unreachable")
        body, _ = yield self.json_get("/rpc/EM.GetStatus?id=0", expect=503)
        self.assertEqual(body["code"], -114)
        health, _ = yield self.json_get("/healthz", expect=503)
        self.assertEqual(health["status"], "degraded")
        self.assertEqual(health["meters"]["grid"]["state"], "down")
        self.assertEqual(health["meters"]["grid"]["last_error"], "upstream unreachable")

    @inlineCallbacks
    def test_healthz_fresh(self):
        health, _ = yield self.json_get("/healthz")
        self.assertEqual(health["status"], "ok")
        grid = health["meters"]["grid"]
        self.assertEqual(grid["state"], "fresh")
        self.assertEqual(set(grid), {"state", "source", "age_s", "last_success", "last_error", "fetches",
                                     "failures", "success_rate"})
        self.assertEqual(grid["fetches"], 1)
        self.assertEqual(grid["success_rate"], 1.0)
        self.assertGreaterEqual(health["uptime_s"], 0)

    @inlineCallbacks
    def test_metrics(self):
        yield self.json_get("/rpc/EM.GetStatus?id=0")
        yield self.http.post(self.base + "/rpc", b'{"id":1,"method":"Sys.GetStatus"}')
        response, body = yield self.http.get(self.base + "/metrics")
        text = body.decode()
        self.assertEqual(response.code, 200)
        reading = self.app.meters["grid"].latest
        self.assertIn(f'meteremu_power_watts{{meter="grid",phase="a"}} {reading.phases[0].act_power!r}', text)
        self.assertIn('meteremu_voltage_volts{meter="grid",phase="c"}', text)
        self.assertIn('meteremu_energy_import_watt_hours_total{meter="grid",phase="a"}', text)
        self.assertIn('meteremu_meter_state{meter="grid",state="fresh"} 1.0', text)
        self.assertRegex(text, r'meteremu_rpc_requests_total\{device="shellypro3em-[0-9a-f]{12}",'
                               r'method="EM.GetStatus",transport="http"\} 1.0')
        self.assertIn('meteremu_rpc_requests_total{device=', text)
        self.assertIn('meteremu_source_polls_total{meter="grid",result="ok"} 1.0', text)
        self.assertIn('meteremu_rpc_request_duration_seconds_count{transport="http"} 2.0', text)

    @inlineCallbacks
    def test_metrics_count_errors_by_code(self):
        yield self.http.get(self.base + "/rpc/EM.GetStatus")  # no id: -103
        yield self.http.get(self.base + "/rpc/EM.GetStatus?id=5")  # -105
        yield self.http.post(self.base + "/rpc", b'{"id":1,"method":"No.Such"}')  # 404
        yield self.http.post(self.base + "/rpc", b'{"id":1,')  # -32700
        _, body = yield self.http.get(self.base + "/metrics")
        text = body.decode()
        for code in ("-103", "-105", "404", "-32700"):
            pattern = r'meteremu_rpc_errors_total\{code="CODE",device="shellypro3em-[0-9a-f]{12}",transport="http"\} 1.0'
            self.assertRegex(text, pattern.replace("CODE", code))


class CORSTests(TestCase):
    @inlineCallbacks
    def test_preflight_and_header(self):
        config = test_config(self.mktemp(), meters=SIM,
                             server={"host": "127.0.0.1", "http_port": 0,
                                     "cors": {"enabled": True, "origins": ["http://ui.local"]}})
        app = yield start_app(self, config)
        http = HTTPClient(self)
        base = f"http://127.0.0.1:{app.http_port()}"
        response = yield http.client.request("OPTIONS", base + "/rpc", headers={"Origin": ["http://ui.local"]})
        yield response.content()
        self.assertEqual(response.code, 204)
        self.assertIn(b"POST", response.headers.getRawHeaders(b"access-control-allow-methods")[0])
        response, _ = yield http.get(base + "/shelly", headers={"Origin": ["http://ui.local"]})
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"), [b"http://ui.local"])
        response, _ = yield http.get(base + "/shelly", headers={"Origin": ["http://evil.example"]})
        self.assertIsNone(response.headers.getRawHeaders(b"access-control-allow-origin"))

    @inlineCallbacks
    def test_off_by_default(self):
        app = yield start_app(self, test_config(self.mktemp(), meters=SIM))
        http = HTTPClient(self)
        response, _ = yield http.get(f"http://127.0.0.1:{app.http_port()}/shelly", headers={"Origin": ["http://x"]})
        self.assertIsNone(response.headers.getRawHeaders(b"access-control-allow-origin"))
