"""Tests for the Pro 3EM's Modbus TCP (specs/shelly.md §4, checks 15 and 30).

The register offsets below are written out again from the spec's tables, not
imported from the map, so a wrong offset in the map fails here. Values are
compared with ``EM.GetStatus`` / ``EMData.GetStatus`` called on the same
device at the same moment, rounded through float32.

Three layers: the pure encoders and :class:`RegisterMap`; the protocol over a
``StringTransport`` (raw frames, any reactor); and the service on a real port
read with pymodbus' own asyncio client (needs ``trial --reactor=asyncio``).
"""

from __future__ import annotations

from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from meteremu.asyncbridge import as_deferred
from meteremu.devices.shelly.modbus import (
    ModbusBindError,
    ModbusService,
    bind_error_message,
)
from tests.support import is_asyncio
from tests.support.shared.modbus import (
    CTX,
    T0,
    RegisterWindow,
    SpecChecks,
    f32,
    make_device,
)


class BindTests(TestCase):
    def test_busy_port_fails_ready_naming_the_port(self) -> None:
        taken = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        device, _ = make_device()
        service = ModbusService(device, "127.0.0.1", port)
        # Bound with every port in privilegedStartService (twistd --uid): the
        # error is raised there (the process stops on it) and ready fails with it.
        self.assertRaises(ModbusBindError, service.privilegedStartService)
        self.addCleanup(service.stopService)
        failure = self.failureResultOf(service.ready, ModbusBindError)
        message = str(failure.value)
        self.assertIn(f"127.0.0.1:{port}", message)
        self.assertIn("already in use", message)

    def test_permission_message(self) -> None:
        import errno

        error = OSError(errno.EACCES, "Permission denied")
        message = bind_error_message("", 502, error)
        self.assertIn("port 502", message)
        self.assertIn("CAP_NET_BIND_SERVICE", message)
        self.assertIn("[::1]:5020", bind_error_message("::1", 5020, OSError(errno.EADDRNOTAVAIL, "x")))

    def test_ready_gives_the_bound_port_and_stop_releases_it(self) -> None:
        device, _ = make_device()
        service = ModbusService(device, "127.0.0.1", 0)
        service.startService()
        port = self.successResultOf(service.ready)
        self.assertNotEqual(port, 0)
        d = service.stopService()
        d.addCallback(lambda _: reactor.listenTCP(port, Factory.forProtocol(Protocol),
                                                  interface="127.0.0.1"))
        return d.addCallback(lambda again: again.stopListening())


async def _new_client(port: int) -> AsyncModbusTcpClient:
    """pymodbus' client needs a running asyncio loop at construction."""
    return AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)


def _asyncio_reactor() -> bool:
    return is_asyncio(reactor)


class ServiceTests(TestCase, SpecChecks):
    """Read the running service with pymodbus' own client, as Victron would."""

    if not _asyncio_reactor():
        skip = "needs: trial --reactor=asyncio"

    timeout = 30

    async def start(self, profile: str = "triphase") -> AsyncModbusTcpClient:
        self.device, self.clock = make_device(profile=profile)
        service = ModbusService(self.device, "127.0.0.1", 0)
        service.startService()
        self.addCleanup(service.stopService)
        port = await service.ready
        client = await as_deferred(_new_client(port))
        self.addCleanup(client.close)
        self.assertTrue(await as_deferred(client.connect()))
        return client

    async def read(self, client: AsyncModbusTcpClient, address: int, count: int,
                   device_id: int = 1) -> Any:
        return await as_deferred(client.read_input_registers(address, count=count,
                                                             device_id=device_id))

    async def window(self, client: AsyncModbusTcpClient, address: int, count: int) -> RegisterWindow:
        response = await self.read(client, address, count)
        self.assertFalse(response.isError(), str(response))
        return RegisterWindow(address, list(response.registers))

    async def test_triphase_map(self) -> None:
        client = await self.start()
        self.check_device_info(await self.window(client, 0, 48), self.device)
        em_window = await self.window(client, 1000, 80)
        em = self.device.core.call("EM.GetStatus", {"id": 0}, CTX)
        self.check_em(em_window, em, T0 - 0.4)
        self.assertEqual(em_window.float(1013), f32(em["total_act_power"]))
        self.assertLess(em_window.float(1013), 0)
        emdata_window = await self.window(client, 1160, 70)
        self.check_emdata(emdata_window, self.device.core.call("EMData.GetStatus", {"id": 0}, CTX),
                          T0 - 0.4)
        # Victron's decoding: FLOAT32 with the low word first.
        response = await self.read(client, 1013, 2)
        value = client.convert_from_registers(response.registers, client.DATATYPE.FLOAT32,
                                              word_order="little")
        self.assertEqual(value, f32(em["total_act_power"]))

    async def test_monophase_map(self) -> None:
        client = await self.start("monophase")
        em1 = [self.device.core.call("EM1.GetStatus", {"id": i}, CTX) for i in range(3)]
        em1data = [self.device.core.call("EM1Data.GetStatus", {"id": i}, CTX) for i in range(3)]
        self.check_em1(await self.window(client, 2000, 60), em1, T0 - 0.4)
        self.check_em1data(await self.window(client, 2300, 60), em1data, T0 - 0.4)
        probe = await self.read(client, 1000, 2)
        self.assertTrue(probe.isError())
        self.assertEqual(probe.exception_code, 2)

    async def test_triphase_refuses_em1_probe_then_answers(self) -> None:
        client = await self.start()
        probe = await self.read(client, 2000, 2)
        self.assertTrue(probe.isError())
        self.assertEqual(probe.exception_code, 2)
        window = await self.window(client, 1013, 2)
        self.assertEqual(window.float(1013), f32(-1248.45))

    async def test_stale_meter(self) -> None:
        client = await self.start()
        self.clock.advance(11)
        failed = await self.read(client, 1000, 80)
        self.assertTrue(failed.isError())
        self.assertEqual(failed.exception_code, 4)
        emdata = self.device.core.call("EMData.GetStatus", {"id": 0}, CTX)
        self.check_emdata(await self.window(client, 1160, 70), emdata, T0 - 0.4)

    async def test_other_unit_id(self) -> None:
        client = await self.start()
        response = await self.read(client, 1013, 2, device_id=2)
        self.assertTrue(response.isError())
        self.assertEqual(response.exception_code, 0x0B)
        self.assertFalse((await self.read(client, 1013, 2)).isError())
