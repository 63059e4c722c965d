"""The Shelly EM Gen3 and Pro EM-50 faces against real captures, over real transports.

The captures (tests/fixtures/shelly/matterbridge_shelly_*_fw1.7.5.json) were
re-serialised by JavaScript, so they give keys, key order and which values
are numbers, not the device's number text (``freq`` reads ``50``). The other
side is aioshelly (``/shelly`` and the WebSocket RPC, as Home Assistant),
a UDP datagram as a Marstek sends it, and python-zeroconf's records.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from twisted.trial.unittest import TestCase

from meteremu.asyncbridge import as_deferred
from meteremu.config import ConfigError
from meteremu.devices.shelly.mdns import build_service_infos
from meteremu.devices.shelly.rpc import CallContext, RpcError
from tests.support import asyncio_reactor_skip, fixture_json, sample_reading, start_app, test_config
from tests.support.udp import free_udp_ports

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h"}}}
FACES = {
    "shelly_em_gen3": ("matterbridge_shelly_emg3_fw1.7.5", "shellyemg3", "S3EM-002CXCEU", 3, "EMG3"),
    "shelly_pro_em50": ("matterbridge_shelly_proem50_fw1.7.5", "shellyproem50", "SPEM-002CEBEU50", 2, "ProEM"),
}
# Not emulated: the relay (nothing to switch) and fw 1.7.5's provisioning state.
NOT_EMULATED = {"switch:0", "provision"}


def number_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def udp_call(port: int, request: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(request, ("127.0.0.1", port))
        return dict(json.loads(sock.recv(4096)))


async def aioshelly_view(port: int, mac: str) -> dict[str, Any]:
    import aiohttp
    from aioshelly.common import ConnectionOptions, get_info
    from aioshelly.const import DEVICES
    from aioshelly.rpc_device import RpcDevice, WsServer

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        info = await get_info(session, "127.0.0.1", port=port)
        device = await RpcDevice.create(session, WsServer(), ConnectionOptions(
            ip_address="127.0.0.1", port=port, device_mac=mac))
        try:
            async with asyncio.timeout(20):
                await device.initialize()
            return {"info": info, "gen": device.gen, "model": device.model, "known": device.model in DEVICES,
                    "hostname": device.hostname, "status": device.status, "config": device.config,
                    "em1": await device.call_rpc("EM1.GetStatus", {"id": 0}),
                    "firmware_supported": device.firmware_supported}
        finally:
            await device.shutdown()


class FaceTests(TestCase):
    skip = asyncio_reactor_skip()
    timeout = 60

    async def check_face(self, kind: str) -> None:
        fixture, prefix, model, gen, app_name = FACES[kind]
        real = fixture_json("shelly", f"{fixture}.json")
        (udp_port,) = free_udp_ports(1)
        config = test_config(self.mktemp(), meters=SIM, devices=[{
            "type": kind, "mac": "C8F09E0A1B2C", "udp_ports": [udp_port],
            "clients": {"127.0.0.2": {"mac": "AABBCC000002"}}}])
        app = await start_app(self, config)
        meter = app.meters["grid"]
        reading = sample_reading(meter.latest.measured_at + 1)
        meter.update(reading)
        device_id = f"{prefix}-c8f09e0a1b2c"
        # A listed client's own identity keeps the face's id prefix.
        self.assertEqual(app.devices[0].identity_for("127.0.0.2").device_id, f"{prefix}-aabbcc000002")

        view = await as_deferred(aioshelly_view(app.http_port(), "C8F09E0A1B2C"))
        # GetDeviceInfo: the capture's keys, in its order.
        self.assertEqual(list(view["info"]), [k for k in real["shelly"] if k not in NOT_EMULATED])
        self.assertEqual((view["info"]["id"], view["info"]["app"]), (device_id, app_name))
        self.assertEqual((view["gen"], view["model"], view["hostname"]), (gen, model, device_id))
        self.assertTrue(view["known"] and view["firmware_supported"])
        # Shelly.GetStatus / GetConfig: the real device's components.
        self.assertEqual(set(view["status"]), set(real["status"]) - NOT_EMULATED)
        self.assertEqual(set(view["config"]), set(real["settings"]) - NOT_EMULATED)
        for key in ("em1:0", "em1:1", "em1data:0", "em1data:1"):
            self.assertEqual(list(view["status"][key]), list(real["status"][key]), key)
            self.assertTrue(all(number_or_null(v) for k, v in view["status"][key].items()
                                if k not in ("calibration",)), key)
            self.assertEqual(list(view["config"][key]), list(real["settings"][key]), key)
        self.assertEqual(view["config"]["em1:0"]["ct_type"], real["settings"]["em1:0"]["ct_type"])
        self.assertEqual(list(view["config"]["sys"]["device"]), list(real["settings"]["sys"]["device"]))
        # Channel 0 carries the whole meter; channel 1 measures nothing.
        self.assertAlmostEqual(view["em1"]["act_power"], reading.total_act_power, places=1)
        self.assertEqual(view["status"]["em1:1"]["act_power"], 0.0)
        self.assertEqual(view["status"]["em1data:0"]["total_act_energy"],
                         round(meter.energy.total_import_wh, 2))

        # UDP, as a Marstek polls this model.
        reply = await as_deferred(asyncio.to_thread(
            udp_call, udp_port, b'{"id":5,"method":"EM1.GetStatus","params":{"id":0}}'))
        self.assertEqual(reply["src"], device_id)
        self.assertAlmostEqual(reply["result"]["act_power"], reading.total_act_power, places=1)
        reply = await as_deferred(asyncio.to_thread(
            udp_call, udp_port, b'{"id":6,"method":"EM.GetStatus","params":{"id":0}}'))
        self.assertEqual(reply["error"]["code"], -105)  # no em:0 on a two-channel meter

        # mDNS: named as the real device (instance = device id), TXT gen as the capture's.
        mdns = fixture_json("shelly", f"{fixture}.mdns.json")
        txt = next(r["data"] for r in mdns["additionals"] if r["type"] == "TXT")
        infos = build_service_infos(app.devices[0].identity, 80, None, ["192.168.1.20"])
        self.assertEqual({i.name for i in infos}, {f"{device_id}._http._tcp.local.",
                                                   f"{device_id}._shelly._tcp.local."})
        for info in infos:
            self.assertIn(f"gen={gen}", txt)
            self.assertEqual(info.properties[b"gen"], str(gen).encode())

        # Stale under on_stale: error (the default): EM1.GetStatus refuses, GetStatus reports the failure.
        meter.report_failure("test: unplugged")
        core = app.devices[0].core
        with self.assertRaises(RpcError) as refused:
            core.call("EM1.GetStatus", {"id": 0}, CallContext("test"))
        self.assertEqual(refused.exception.code, -114)
        em1 = core.call("Shelly.GetStatus", {}, CallContext("test"))["em1:0"]
        self.assertEqual((em1["act_power"], em1["errors"]), (None, ["power_meter_failure"]))

    async def test_em_gen3(self) -> None:
        await self.check_face("shelly_em_gen3")

    async def test_pro_em50(self) -> None:
        await self.check_face("shelly_pro_em50")


class FaceConfigTests(TestCase):
    def test_defaults_and_refusals(self) -> None:
        config = test_config(self.mktemp(), meters=SIM, devices=[
            {"type": "shelly_em_gen3", "http_port": 18081}, {"type": "shelly_pro_em50", "http_port": 18082}])
        self.assertEqual([d.options.udp_ports for d in config.devices], [(2222,), (2223,)])
        for key, value in (("modbus_port", 502), ("profile", "monophase"), ("gen1_endpoints", True)):
            exc = self.assertRaises(ConfigError, test_config, self.mktemp(), meters=SIM,
                                    devices=[{"type": "shelly_em_gen3", key: value}])
            self.assertIn(key, str(exc))
