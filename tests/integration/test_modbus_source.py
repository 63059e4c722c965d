"""The modbus source against pymodbus' own server on loopback, serving register images.

The images put values where the makers' published register tables say
(SDM630, DTSU666) and where pysunspec2's definition of SunSpec model 203
says; faults are real: a server that never answers, one that goes away and
comes back, exception answers. Runs on the asyncio (meteremu) reactor, as
pymodbus does.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from meteremu.asyncbridge import as_deferred
from meteremu.meter import Freshness, Meter
from meteremu.sources.modbus.options import ModbusOptions, ModbusRegister, ModbusValues
from meteremu.sources.modbus.source import ModbusSource
from meteremu.sources.modbus.sunspec import model_points
from tests.support import asyncio_reactor_skip


def f32(value: float, word_order: str = "big") -> list[int]:
    raw = struct.pack(">f", value)
    words = [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]
    return words if word_order == "big" else words[::-1]


def image(values: dict[int, list[int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for address, registers in values.items():
        for i, r in enumerate(registers):
            out[address + i] = r & 0xFFFF
    return out


SDM630 = image({0x00: f32(230.1), 0x02: f32(231.2), 0x04: f32(229.3), 0x06: f32(5.5), 0x08: f32(1.25),
                0x0A: f32(2.0), 0x0C: f32(1200.5), 0x0E: f32(-250.0), 0x10: f32(300.0), 0x1E: f32(0.95),
                0x20: f32(-0.87), 0x22: f32(0.99), 0x46: f32(50.02), 0x48: f32(12345.6), 0x4A: f32(789.25)})
# DTSU666: voltages in 0.1 V, currents in mA, powers in 0.1 W, pf in thousandths, Hz in 0.01 Hz.
DTSU666 = image({0x2006: f32(2301.0), 0x2008: f32(2312.0), 0x200A: f32(2293.0), 0x200C: f32(5500.0),
                 0x200E: f32(1250.0), 0x2010: f32(2000.0), 0x2014: f32(12005.0), 0x2016: f32(-2500.0),
                 0x2018: f32(3000.0), 0x202C: f32(950.0), 0x202E: f32(870.0), 0x2030: f32(990.0),
                 0x2044: f32(5002.0), 0x101E: f32(12345.6), 0x1028: f32(789.25)})
# Everything between the planned blocks' registers exists too (a real meter answers a range).
for table in (SDM630, DTSU666):
    for a in range(min(table), max(table)):
        table.setdefault(a, 0)


def sunspec_image(base: int = 40000) -> dict[int, int]:
    points = model_points(203)
    start = base + 2 + 2 + 66  # SunS, the common model 1 (header + 66), then model 203
    body = {"ID": 203, "L": 105, "A_SF": -2, "AphA": 550, "AphB": 125, "AphC": 200, "V_SF": -1,
            "PhVphA": 2301, "PhVphB": 2312, "PhVphC": 2293, "Hz_SF": -2, "Hz": 5002, "W_SF": -1,
            "WphA": 12005, "WphB": -2500, "WphC": 3000, "PF_SF": 0, "PFphA": 95, "PFphB": -87, "PFphC": 99,
            "TotWh_SF": 0}
    out = {base: 0x5375, base + 1: 0x6E53, base + 2: 1, base + 3: 66}
    for a in range(base + 4, start + 2 + 105):
        out[a] = 0
    for name, value in body.items():
        out[start + points[name][0]] = value & 0xFFFF
    for name, value in (("TotWhImp", 12345600), ("TotWhExp", 789250)):
        out[start + points[name][0]] = value >> 16
        out[start + points[name][0] + 1] = value & 0xFFFF
    out[start + 2 + 105] = 0xFFFF
    out[start + 3 + 105] = 0
    return out


@inlineCallbacks
def until(condition: Callable[[], bool], what: str, tries: int = 500):
    """Run the reactor until ``condition`` holds (bounded by turns, not by a time)."""
    for _ in range(tries):
        if condition():
            return
        yield deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"never: {what}")


class ModbusCase(TestCase):
    timeout = 60
    skip = asyncio_reactor_skip()

    @inlineCallbacks
    def serve(self, input_regs: dict[int, int] | None = None, holding: dict[int, int] | None = None,
              unit: int = 1, port: int = 0, framer: str = "socket"):
        from pymodbus import FramerType
        from pymodbus.datastore import (
            ModbusDeviceContext,
            ModbusServerContext,
            ModbusSparseDataBlock,
        )
        from pymodbus.server import ModbusTcpServer

        device = ModbusDeviceContext(ir=ModbusSparseDataBlock(input_regs or {0: 0}),
                                     hr=ModbusSparseDataBlock(holding or {0: 0}))
        async def start() -> Any:  # pymodbus' server wants a running loop from its constructor on
            server = ModbusTcpServer(ModbusServerContext(devices={unit: device}, single=False),
                                     address=("127.0.0.1", port), framer=FramerType(framer))
            asyncio.ensure_future(server.serve_forever())
            return server

        server = yield as_deferred(start())
        yield until(lambda: server.transport is not None, "the server listens")
        self.addCleanup(lambda: as_deferred(server.shutdown()))
        return server, server.transport.sockets[0].getsockname()[1]

    def source(self, port: int, **kw: Any) -> tuple[ModbusSource, Meter]:
        meter = Meter("grid", reactor, stale_after=3600.0, source_type="modbus")
        options = ModbusOptions(host="127.0.0.1", port=port, interval=0.05, timeout=0.3, reconnect_min=0.05,
                                reconnect_max=0.1, **kw)
        self.assertEqual(options.validate(), [])
        source = ModbusSource(meter, options, reactor)
        source.startService()
        self.addCleanup(source.stopService)
        return source, meter


class PresetTests(ModbusCase):
    def check_meter(self, meter: Meter) -> None:
        latest = meter.latest
        assert latest is not None
        self.assertEqual([round(p.act_power, 1) for p in latest.phases], [1200.5, -250.0, 300.0])
        self.assertEqual([round(p.voltage, 1) for p in latest.phases], [230.1, 231.2, 229.3])
        self.assertAlmostEqual(latest.phases[0].current, 5.5, places=3)
        self.assertAlmostEqual(latest.phases[0].freq, 50.02, places=3)
        self.assertAlmostEqual(abs(latest.phases[1].pf), 0.87, places=3)
        assert latest.energy is not None
        self.assertLess(abs(latest.energy[0][0] - 12345600.0), 1.0)  # float32 kWh resolution
        self.assertLess(abs(latest.energy[0][1] - 789250.0), 1.0)
        self.assertEqual(meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_sdm630(self):
        _, port = yield self.serve(input_regs=SDM630)
        source, meter = self.source(port, preset="sdm630")
        yield until(lambda: meter.latest is not None, "a sample")
        self.check_meter(meter)
        self.assertEqual(source.polls, source.samples + (1 if source._busy else 0))

    @inlineCallbacks
    def test_sdm120_single_phase(self):
        """The SDM120's registers are the SDM630's phase-1 ones (here the same image)."""
        _, port = yield self.serve(input_regs=SDM630)
        _, meter = self.source(port, preset="sdm120")
        yield until(lambda: meter.latest is not None, "a sample")
        latest = meter.latest
        self.assertEqual(len(latest.phases), 1)
        self.assertAlmostEqual(latest.phases[0].act_power, 1200.5, places=2)
        self.assertAlmostEqual(latest.phases[0].voltage, 230.1, places=3)
        self.assertLess(abs(latest.energy[0][0] - 12345600.0), 1.0)

    @inlineCallbacks
    def test_dtsu666_scale_factors(self):
        _, port = yield self.serve(holding=DTSU666, unit=3)
        _, meter = self.source(port, preset="dtsu666", unit=3)
        yield until(lambda: meter.latest is not None, "a sample")
        self.check_meter(meter)

    @inlineCallbacks
    def test_sunspec_discovery(self):
        _, port = yield self.serve(holding=sunspec_image())
        source, meter = self.source(port, preset="sunspec")
        yield until(lambda: meter.latest is not None, "a sample")
        self.check_meter(meter)
        self.assertEqual(meter.details["registers"]["a_power"], "holding 40089 int16")

    @inlineCallbacks
    def test_sunspec_without_a_meter_model_is_down(self):
        _, port = yield self.serve(holding={40000: 0x5375, 40001: 0x6E53, 40002: 0xFFFF, 40003: 0})
        _, meter = self.source(port, preset="sunspec")
        yield until(lambda: meter.freshness() == Freshness.DOWN, "down")
        self.assertIn("no SunSpec meter model", meter.down_reason or "")

    @inlineCallbacks
    def test_rtu_frames_over_tcp(self):
        _, port = yield self.serve(input_regs=SDM630, framer="rtu")
        _, meter = self.source(port, preset="sdm630", framer="rtu")
        yield until(lambda: meter.latest is not None, "a sample")
        self.check_meter(meter)


class RegisterMapTests(ModbusCase):
    @inlineCallbacks
    def test_word_order_and_scale_over_the_wire(self):
        regs = image({10: f32(-1500.25, "little"), 20: [0x0001, 0x86A0][::-1], 30: [2302]})
        _, port = yield self.serve(holding=regs)
        values = ModbusValues(
            a_power=ModbusRegister(10, "holding", "float32", word_order="little"),
            energy_import=ModbusRegister(20, "holding", "uint32", word_order="little", unit="kWh", scale=0.01),
            a_voltage=ModbusRegister(30, "holding", "uint16", scale=0.1))
        source, meter = self.source(port, values=values, max_gap=0)
        yield until(lambda: meter.latest is not None, "a sample")
        latest = meter.latest
        self.assertAlmostEqual(latest.phases[0].act_power, -1500.25, places=3)
        self.assertAlmostEqual(latest.phases[0].voltage, 230.2, places=3)
        self.assertAlmostEqual(latest.energy[0][0], 1_000_000.0, places=3)  # 100000 x 0.01 kWh
        self.assertEqual(len(source.map.blocks), 3)

    @inlineCallbacks
    def test_an_exception_answer_is_down_at_once(self):
        _, port = yield self.serve(holding={0: 1})
        values = ModbusValues(a_power=ModbusRegister(500, "holding", "int16"))
        _, meter = self.source(port, values=values)
        yield until(lambda: meter.freshness() == Freshness.DOWN, "down")
        self.assertIn("Modbus exception 2", meter.down_reason or "")
        self.assertIn("holding registers 500..500", meter.down_reason or "")

    @inlineCallbacks
    def test_a_nan_is_refused(self):
        _, port = yield self.serve(input_regs=image({0: [0x7FC0, 0]}))
        values = ModbusValues(a_power=ModbusRegister(0, "input", "float32"))
        source, meter = self.source(port, values=values)
        yield until(lambda: meter.stats.last_error is not None, "a refusal")
        self.assertIn("a_power", meter.stats.last_error)
        self.assertIsNone(meter.latest)


class FaultTests(ModbusCase):
    @inlineCallbacks
    def test_silence_makes_the_meter_down_and_never_blocks(self):
        silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        source, meter = self.source(silent.getHost().port, preset="sdm630")
        ticks: list[int] = []
        yield until(lambda: meter.freshness() == Freshness.DOWN, "down")
        self.assertIn("no answer", meter.down_reason or "")
        self.assertGreaterEqual(source.failures_in_row, 3)
        # The reactor kept turning meanwhile (until() itself ran on it).
        reactor.callLater(0, ticks.append, 1)
        yield until(lambda: bool(ticks), "a reactor turn")

    @inlineCallbacks
    def test_a_device_that_goes_away_and_comes_back(self):
        server, port = yield self.serve(input_regs=SDM630)
        source, meter = self.source(port, preset="sdm630")
        yield until(lambda: meter.latest is not None, "a sample")
        yield as_deferred(server.shutdown())
        yield until(lambda: meter.freshness() == Freshness.DOWN, "down")
        samples = source.samples
        yield self.serve(input_regs=SDM630, port=port)
        yield until(lambda: source.samples > samples and meter.freshness() == Freshness.FRESH, "fresh again")
