"""The service tree built from a config: every transport wired to one device."""

from __future__ import annotations

import json
import socket
import struct

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from meteremu.app import StartupError, build
from meteremu.asyncbridge import as_deferred
from tests.support import HTTPClient, asyncio_reactor_skip, start_app, test_config

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h", "start_time": "12:00"}},
       "garage": {"source": {"type": "simulator", "interval": "1h", "pv_peak": 0, "seed": 9}}}


class WiringTests(TestCase):
    skip = asyncio_reactor_skip()
    timeout = 30

    async def test_modbus_and_mdns_follow_the_config(self):
        from pymodbus.client import AsyncModbusTcpClient

        config = test_config(self.mktemp(), meters=SIM, devices=[{
            "type": "shelly_pro_3em", "meter": "grid", "modbus_port": 0, "modbus_bind": "127.0.0.1",
            "mdns": {"interfaces": ["127.0.0.1"], "addresses": ["127.0.0.1"]}}])
        app = await start_app(self, config)
        device = app.devices[0]
        self.assertTrue(device.modbus)
        port = await app.device_services[0].modbus.ready

        async def read() -> list[int]:
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
            try:
                await client.connect()
                response = await client.read_input_registers(1013, count=2, device_id=1)
                return list(response.registers)
            finally:
                client.close()

        registers = await as_deferred(read())
        total = struct.unpack(">f", struct.pack(">HH", registers[1], registers[0]))[0]
        em = device.core.call("EM.GetStatus", {"id": 0}, _ctx())
        self.assertAlmostEqual(total, em["total_act_power"], places=1)
        mdns = app.device_services[0].mdns
        self.assertEqual(mdns.port, app.http_port())  # the real port, known after listening
        self.assertEqual({info.name for info in mdns.infos},
                         {f"{device.identity.device_id}._http._tcp.local.",
                          f"{device.identity.device_id}._shelly._tcp.local."})
        self.assertEqual(json.loads(device.core.handle_bytes(
            b'{"id":1,"method":"Modbus.GetConfig"}', _ctx()))["result"], {"enable": True})


class TreeTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_two_devices_two_meters_two_ports(self):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
        sock.close()
        config = test_config(self.mktemp(), meters=SIM, devices=[
            {"type": "shelly_pro_3em", "meter": "grid"},
            {"type": "shelly_pro_3em", "meter": "garage", "http_port": free, "name": "garage",
             "profile": "monophase"}])
        app = yield start_app(self, config)
        http = HTTPClient(self)
        _, one = yield http.get(f"http://127.0.0.1:{app.http_port()}/shelly")
        _, two = yield http.get(f"http://127.0.0.1:{free}/shelly")
        one, two = json.loads(one), json.loads(two)
        self.assertNotEqual(one["mac"], two["mac"])
        self.assertEqual((one["profile"], two["profile"]), ("triphase", "monophase"))
        self.assertEqual(two["name"], "garage")
        _, body = yield http.get(f"http://127.0.0.1:{free}/healthz")
        response, _ = yield http.get(f"http://127.0.0.1:{free}/healthz")
        self.assertEqual(response.code, 404)
        _, overview = yield http.get(f"http://127.0.0.1:{app.http_port()}/admin/overview")
        devices = json.loads(overview)["devices"]
        self.assertEqual(set(devices), {"0", "garage"})
        self.assertEqual(devices["garage"]["meter"], "garage")

    @inlineCallbacks
    def test_gateway_only(self):
        app = yield start_app(self, test_config(self.mktemp(), meters=SIM, devices=[]))
        self.assertEqual(app.devices, [])
        http = HTTPClient(self)
        response, body = yield http.get(f"http://127.0.0.1:{app.http_port()}/healthz")
        self.assertEqual(json.loads(body)["meters"].keys(), {"grid", "garage"})
        response, _ = yield http.get(f"http://127.0.0.1:{app.http_port()}/shelly")
        self.assertEqual(response.code, 404)

    def test_busy_udp_port_is_a_startup_error(self):
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("127.0.0.1", 0))
        self.addCleanup(blocker.close)
        port = blocker.getsockname()[1]
        from twisted.internet import reactor

        app = build(test_config(self.mktemp(), meters=SIM,
                                devices=[{"type": "shelly_pro_3em", "udp_ports": [port]}]), reactor)
        err = self.assertRaises(StartupError, app.service.privilegedStartService)
        self.assertIn(f"cannot listen for UDP RPC on 127.0.0.1:{port}", str(err))
        # twistd exits here; the test closes the HTTP port that did open.
        return app.http[0].stopService()


def _ctx():
    from meteremu.devices.shelly.rpc import CallContext

    return CallContext("test")
