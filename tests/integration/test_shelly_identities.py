"""Per-client identities (``clients: {<ip>: {mac: …}}``) over every real transport.

Indevolt pairs one meter per system: two systems polling one emulated Pro 3EM
must each see their own device id and MAC. On loopback, a client that binds
its socket to 127.0.0.2 (or .3) is a distinct peer to the server on
127.0.0.1, so the listed and unlisted clients are real sockets with real
source addresses: aioshelly (HTTP ``/shelly`` and the WebSocket RPC, as Home
Assistant connects), aiohttp for the gen1 endpoints, asyncio UDP datagrams
and pymodbus' client for the Modbus device-info block.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as hst
from twisted.trial.unittest import TestCase

from meteremu.asyncbridge import as_deferred
from meteremu.config import ConfigError
from tests.support import asyncio_reactor_skip, sample_reading, start_app, test_config
from tests.support.fuzz import fuzz_settings, yaml_values
from tests.support.udp import free_udp_ports

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h"}}}
OWN_MAC = "C8F09E0A1B2C"
LISTED = "127.0.0.2"
LISTED_MAC = "AABBCC000002"
AUTO = "127.0.0.3"
UNLISTED = "127.0.0.1"


def device_config(udp_port: int, **extra: Any) -> dict[str, Any]:
    return {"type": "shelly_pro_3em", "mac": OWN_MAC, "udp_ports": [udp_port], "modbus_port": 0,
            "modbus_bind": "127.0.0.1",
            "clients": {LISTED: {"mac": "AA:BB:CC:00:00:02"}, AUTO: {"mac": "auto"}}, **extra}


class UDPClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)


async def udp_call(source: str, port: int, request: bytes) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        UDPClient, local_addr=(source, 0), remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(request)
        async with asyncio.timeout(5):
            return dict(json.loads(await proto.replies.get()))
    finally:
        transport.close()


async def modbus_mac(source: str, port: int) -> str:
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0, source_address=(source, 0))
    try:
        await client.connect()
        response = await client.read_input_registers(0, count=6, device_id=1)
        # Strings are byte-swapped per register (the device's own layout).
        raw = b"".join(struct.pack("<H", r) for r in response.registers)
        return raw.rstrip(b"\0").decode("ascii")
    finally:
        client.close()


async def shelly_views(source: str, port: int, mac: str) -> dict[str, Any]:
    """What one client sees of the device, through aioshelly and aiohttp from ``source``."""
    import aiohttp
    from aioshelly.common import ConnectionOptions, get_info
    from aioshelly.rpc_device import RpcDevice, WsServer

    connector = aiohttp.TCPConnector(force_close=True, local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        info = await get_info(session, "127.0.0.1", port=port)
        device = await RpcDevice.create(session, WsServer(), ConnectionOptions(
            ip_address="127.0.0.1", port=port, device_mac=mac))
        try:
            async with asyncio.timeout(20):
                await device.initialize()
            views = {
                "shelly": (info["id"], info["mac"]),
                "ws_info": (device.shelly["id"], device.shelly["mac"]),
                "ws_hostname": device.hostname,
                "ws_sys_status": device.status["sys"]["mac"],
                "ws_sys_config": device.config["sys"]["device"]["mac"],
                "ws_mqtt": (await device.call_rpc("MQTT.GetConfig"))["client_id"],
            }
        finally:
            await device.shutdown()
        async with session.post(f"http://127.0.0.1:{port}/rpc", json={
                "id": 7, "src": "test", "method": "Shelly.GetDeviceInfo"}) as response:
            frame = await response.json()
            views["http_frame"] = (frame["src"], frame["result"]["mac"])
        async with session.get(f"http://127.0.0.1:{port}/rpc/Sys.GetStatus") as response:
            views["http_sys"] = (await response.json())["mac"]
        async with session.get(f"http://127.0.0.1:{port}/status") as response:
            views["gen1_status"] = (await response.json())["mac"]
        async with session.get(f"http://127.0.0.1:{port}/settings") as response:
            device_block = (await response.json())["device"]
            views["gen1_settings"] = (device_block["hostname"], device_block["mac"])
    return views


class ClientIdentityTests(TestCase):
    skip = asyncio_reactor_skip()
    timeout = 60

    async def test_each_listed_client_sees_its_own_identity_on_every_transport(self) -> None:
        (udp_port,) = free_udp_ports(1)
        store = self.mktemp()
        app = await start_app(self, test_config(store, meters=SIM, devices=[device_config(udp_port)]))
        device = app.devices[0]
        auto_mac = device.identity_for(AUTO).mac
        self.assertRegex(auto_mac, r"^C8F09E[0-9A-F]{6}$")
        self.assertNotIn(auto_mac, (OWN_MAC, LISTED_MAC))
        http_port = app.http_port()
        modbus_port = await app.device_services[0].modbus.ready
        for source, mac in ((LISTED, LISTED_MAC), (AUTO, auto_mac), (UNLISTED, OWN_MAC)):
            device_id = f"shellypro3em-{mac.lower()}"
            views = await as_deferred(shelly_views(source, http_port, mac))
            self.assertEqual(views, {
                "shelly": (device_id, mac), "ws_info": (device_id, mac), "ws_hostname": device_id,
                "ws_sys_status": mac, "ws_sys_config": mac, "ws_mqtt": device_id,
                "http_frame": (device_id, mac), "http_sys": mac, "gen1_status": mac,
                "gen1_settings": (device_id, mac)}, source)
            # UDP: the battery's fast path and the general path both answer as this client's device.
            poll = await as_deferred(udp_call(source, udp_port, b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}'))
            self.assertEqual(poll["src"], device_id)
            self.assertIn("total_act_power", poll["result"])
            info = await as_deferred(udp_call(source, udp_port, b'{"id":2,"method":"Shelly.GetDeviceInfo"}'))
            self.assertEqual((info["src"], info["result"]["mac"]), (device_id, mac))
            self.assertEqual(await as_deferred(modbus_mac(source, modbus_port)), mac)

        # The generated MAC is kept: the same client sees the same device after a restart.
        await app.service.stopService()
        again = await start_app(self, test_config(store, meters=SIM, devices=[device_config(udp_port)]))
        self.assertEqual(again.devices[0].identity_for(AUTO).mac, auto_mac)


async def notification_src(source: str, port: int, push: Any) -> str:
    """Subscribe over the WebSocket from ``source``, make the meter move, return the NotifyStatus ``src``."""
    import aiohttp

    connector = aiohttp.TCPConnector(force_close=True, local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.ws_connect(f"http://127.0.0.1:{port}/rpc") as ws:
            await ws.send_json({"id": 1, "src": "probe", "method": "Shelly.GetStatus"})
            async with asyncio.timeout(10):
                while (await ws.receive_json()).get("id") != 1:
                    pass
                push()
                while True:
                    frame = await ws.receive_json()
                    if frame.get("method") == "NotifyStatus":
                        return str(frame["src"])


class NotificationIdentityTests(TestCase):
    skip = asyncio_reactor_skip()
    timeout = 60

    async def test_notifications_carry_the_clients_own_device_id(self) -> None:
        (udp_port,) = free_udp_ports(1)
        app = await start_app(self, test_config(self.mktemp(), meters=SIM, devices=[device_config(udp_port)]))
        meter = app.meters["grid"]
        http_port = app.http_port()
        t = [meter.latest.measured_at if meter.latest else 1_700_000_000.0]

        def push() -> None:
            t[0] += 1.0
            meter.update(sample_reading(t[0], (1000.0 + t[0] % 100, 3.6, -244.0)))

        for source, mac in ((LISTED, LISTED_MAC), (UNLISTED, OWN_MAC)):
            src = await as_deferred(notification_src(source, http_port, push))
            self.assertEqual(src, f"shellypro3em-{mac.lower()}", source)


class ClientConfigTests(TestCase):
    def error(self, clients: Any, **extra: Any) -> str:
        exc = self.assertRaises(ConfigError, test_config, self.mktemp(), meters=SIM, devices=[{
            "type": "shelly_pro_3em", "mac": OWN_MAC, "clients": clients, **extra}])
        return str(exc)

    def test_bad_entries_are_named(self) -> None:
        self.assertIn("clients.10.0.0.9.mac", self.error({"10.0.0.9": {"mac": "nope"}}))
        self.assertIn("expected a client IP address", self.error({"battery": {"mac": "auto"}}))
        self.assertIn("device's own MAC", self.error({"10.0.0.9": {"mac": "c8:f0:9e:0a:1b:2c"}}))
        self.assertIn("also the MAC of client 10.0.0.8", self.error(
            {"10.0.0.8": {"mac": "AABBCC000002"}, "10.0.0.9": {"mac": "aa-bb-cc-00-00-02"}}))
        self.assertIn("clients", self.error({"10.0.0.9": {"mac": "auto", "colour": "red"}}))
        self.assertIn("clients", self.error(["10.0.0.9"]))

    @fuzz_settings(300)
    @given(yaml_values(keys=hst.sampled_from(["mac", "10.0.0.9", "::1", "auto", "AABBCC000002"])))
    def test_any_clients_value_is_accepted_or_a_config_error(self, clients: Any) -> None:
        # Whatever the YAML holds under clients:, the loader answers with a config or a ConfigError.
        try:
            test_config(self.mktemp(), meters=SIM, devices=[
                {"type": "shelly_pro_3em", "mac": OWN_MAC, "clients": clients}])
        except ConfigError:
            pass
