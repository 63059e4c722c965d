"""The EcoTracker face through everHome's own client library (``ecotracker``, aiohttp) on loopback."""

from __future__ import annotations

import aiohttp
from ecotracker import EcoTracker
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from meteremu.asyncbridge import as_deferred
from tests.support import HTTPClient, asyncio_reactor_skip, sample_reading, start_app, test_config

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h"}}}


async def poll_twice(port: int) -> tuple[list[dict], int, int]:
    """Two updates on one aiohttp session: the data, and connections made and reused."""
    made, reused = [], []

    async def on_create(session, context, params):
        made.append(1)

    async def on_reuse(session, context, params):
        reused.append(1)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        meter = EcoTracker("127.0.0.1", port, session=session)
        seen = []
        for _ in range(2):
            if not await meter.async_update():
                raise AssertionError("the EcoTracker client could not read /v1/json")
            seen.append(meter.get_all_data())
    return seen, len(made), len(reused)


class EcoTrackerClientTests(TestCase):
    timeout = 30
    skip = asyncio_reactor_skip()

    @inlineCallbacks
    def start(self, **device):
        config = test_config(self.mktemp(), meters=SIM,
                             devices=[{"type": "everhome_ecotracker", "mac": "B43A452249C9", **device}])
        app = yield start_app(self, config)
        return app

    @inlineCallbacks
    def test_the_client_reads_every_field_over_one_kept_alive_connection(self):
        app = yield self.start()
        meter = app.meters["grid"]
        meter.update(sample_reading(meter.latest.measured_at + 1))
        seen, made, reused = yield as_deferred(poll_twice(app.http_port()))
        self.assertEqual((made, reused), (1, 1))  # HTTP keep-alive: one connection for both polls
        data = seen[-1]
        self.assertEqual(data["power"], round(meter.latest.total_act_power))
        self.assertEqual([data[f"powerPhase{i}"] for i in (1, 2, 3)],
                         [round(meter.latest.phase(i).act_power) for i in range(3)])
        self.assertIn("powerAvg", data)
        self.assertEqual(data["energyCounterIn"], round(meter.energy.total_import_wh, 1))
        self.assertEqual(data["energyCounterOut"], round(meter.energy.total_export_wh, 1))
        [device] = app.devices
        self.assertEqual(device.identity.device_id, "ecotracker-B43A452249C9")
        self.assertEqual(device.clients.active_batteries(), ["127.0.0.1"])

    @inlineCallbacks
    def test_a_down_meter_gets_the_configured_fallback(self):
        app = yield self.start(on_stale={"fallback": 0})
        device = app.devices[0]
        device.meter.report_failure("test: the real meter is unplugged")  # down
        http = HTTPClient(self)
        response, body = yield http.get(f"http://127.0.0.1:{app.http_port()}/v1/json")
        self.assertEqual(response.code, 200)
        self.assertIn(b'"power":0,', body)
        response, _ = yield http.get(f"http://127.0.0.1:{app.http_port()}/v1/other")
        self.assertEqual(response.code, 404)

    def test_config_errors_are_named(self):
        from meteremu.config import ConfigError

        err = self.assertRaises(ConfigError, test_config, self.mktemp(), meters=SIM,
                                devices=[{"type": "everhome_ecotracker", "average_window": "0s"}])
        self.assertIn("average_window", str(err))
