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

import math
import struct
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.modbus import (
    ModbusTcpFactory,
)
from meteremu.devices.shelly.modbus_map import (
    ModbusDeviceFailure,
    ModbusIllegalAddress,
    ModbusIllegalValue,
    RegisterMap,
    float32_cdab,
    float32_from_cdab,
    string_from_swapped,
    string_swapped,
    uint32_cdab,
    uint32_from_cdab,
)
from meteremu.devices.shelly.options import FallbackPolicy
from meteremu.devices.shelly.rpc import CallContext
from meteremu.reading import PhaseReading, Reading
from tests.support.shared.modbus import (
    CTX,
    MAC,
    T0,
    RegisterWindow,
    SpecChecks,
    f32,
    make_device,
)


class EncodingTests(SynchronousTestCase):
    def test_float32_low_word_first(self) -> None:
        self.assertEqual(float32_cdab(1.0), [0x0000, 0x3F80])
        self.assertEqual(float32_cdab(-2.5), [0x0000, 0xC020])
        self.assertEqual(float32_cdab(230.1), [0x199A, 0x4366])

    def test_float32_round_trip_and_null(self) -> None:
        for value in (0.0, -1248.45, 2589773.39, 0.93):
            self.assertEqual(float32_from_cdab(float32_cdab(value)), f32(value))
        self.assertTrue(math.isnan(float32_from_cdab(float32_cdab(None))))
        self.assertEqual(float32_from_cdab(float32_cdab(1e40)), math.inf)

    def test_uint32_low_word_first_and_clamped(self) -> None:
        self.assertEqual(uint32_cdab(0x12345678), [0x5678, 0x1234])
        self.assertEqual(uint32_cdab(T0 + 0.9), uint32_cdab(T0))
        self.assertEqual(uint32_from_cdab(uint32_cdab(T0)), int(T0))
        self.assertEqual(uint32_cdab(-5), [0, 0])
        self.assertEqual(uint32_cdab(2**40), [0xFFFF, 0xFFFF])

    def test_string_bytes_swapped_in_each_register(self) -> None:
        registers = string_swapped("Pro3EM-1", 4)
        big_endian = b"".join(struct.pack(">H", r) for r in registers)
        self.assertEqual(big_endian, b"rP3oME1-")  # as a user saw it (modbus2mqtt#91)
        self.assertEqual(string_swapped("abc", 3), [0x6261, 0x0063, 0x0000])
        self.assertEqual(string_from_swapped(string_swapped("abc", 3)), "abc")

    def test_string_cut_to_fit(self) -> None:
        self.assertEqual(string_from_swapped(string_swapped("x" * 80, 32)), "x" * 64)
        self.assertEqual(string_swapped(None, 2), [0, 0])
        # 63 ASCII bytes + a 2-byte character: the character is dropped, not split.
        self.assertEqual(string_from_swapped(string_swapped("y" * 63 + "é", 32)), "y" * 63)


class TriphaseMapTests(SynchronousTestCase, SpecChecks):
    def setUp(self) -> None:
        self.device, self.clock = make_device()
        self.map = RegisterMap(self.device)

    def window(self, start: int, count: int) -> RegisterWindow:
        return RegisterWindow(start, self.map.read(start, count))

    def test_device_info(self) -> None:
        self.check_device_info(self.window(0, 48), self.device)

    def test_em_equals_em_getstatus(self) -> None:
        em = self.device.core.call("EM.GetStatus", {"id": 0}, CTX)
        self.check_em(self.window(1000, 80), em, T0 - 0.4)

    def test_emdata_equals_emdata_getstatus(self) -> None:
        emdata = self.device.core.call("EMData.GetStatus", {"id": 0}, CTX)
        window = self.window(1160, 70)
        self.check_emdata(window, emdata, T0 - 0.4)
        self.assertNotEqual(window.float(1162), 0.0)
        # Not modelled: reactive energy reads 0.0; resettable/fundamental repeat the counters.
        for base in (1170, 1190, 1210):
            self.assertEqual(window.float(base + 8), 0.0)
            self.assertEqual(window.float(base + 10), 0.0)
            self.assertEqual(window.float(base + 2), window.float(base + 12))

    def test_total_and_export_power(self) -> None:
        total = self.device.core.call("EM.GetStatus", {"id": 0}, CTX)["total_act_power"]
        self.assertLess(total, 0)
        self.assertEqual(float32_from_cdab(self.map.read(1013, 2)), f32(total))
        self.assertEqual(float32_from_cdab(self.map.read(1044, 2)), f32(-2500.2))

    def test_partial_reads_inside_a_block(self) -> None:
        whole = self.map.read(1000, 80)
        self.assertEqual(self.map.read(1013, 2), whole[13:15])
        self.assertEqual(self.map.read(1079, 1), whole[79:80])
        self.assertEqual(self.map.read(1017, 3), [0, 0, 0])

    def test_every_block_builds_its_size(self) -> None:
        for block in self.map.blocks:
            self.assertEqual(len(block.build(CTX)), block.size, block.name)

    def test_illegal_addresses(self) -> None:
        for address, count in [(48, 1), (47, 2), (999, 1), (999, 2), (1080, 1), (1075, 10),
                               (1159, 1), (1230, 1), (1229, 2), (2000, 2), (2300, 2), (65535, 1)]:
            with self.assertRaises(ModbusIllegalAddress, msg=f"{address}+{count}") as caught:
                self.map.read(address, count)
            self.assertEqual(caught.exception.code, 2)

    def test_illegal_count(self) -> None:
        for count in (0, 126):
            with self.assertRaises(ModbusIllegalValue) as caught:
                self.map.read(1000, count)
            self.assertEqual(caught.exception.code, 3)

    def test_stale_meter_fails_live_block_only(self) -> None:
        self.clock.advance(11)
        with self.assertRaises(ModbusDeviceFailure) as caught:
            self.map.read(1013, 2)
        self.assertEqual(caught.exception.code, 4)
        self.assertIn("stale", caught.exception.message)
        emdata = self.device.core.call("EMData.GetStatus", {"id": 0}, CTX)
        self.check_emdata(self.window(1160, 70), emdata, T0 - 0.4)
        self.check_device_info(self.window(0, 48), self.device)

    def test_hold_and_fallback_policies_keep_serving(self) -> None:
        device, clock = make_device(on_stale="hold")
        clock.advance(60)
        self.assertEqual(float32_from_cdab(RegisterMap(device).read(1013, 2)), f32(-1248.45))
        device, clock = make_device(on_stale=FallbackPolicy(fallback=800.0))
        clock.advance(60)
        self.assertEqual(float32_from_cdab(RegisterMap(device).read(1013, 2)), 800.0)

    def test_values_are_live(self) -> None:
        self.clock.advance(1)
        self.device.meter.update(Reading(phases=(PhaseReading.from_power(500.0),) * 3,
                                         measured_at=T0 + 1))
        self.assertEqual(float32_from_cdab(self.map.read(1013, 2)), 1500.0)
        self.assertEqual(uint32_from_cdab(self.map.read(1000, 2)), int(T0 + 1))

    def test_scaling_follows_the_device(self) -> None:
        seen: list[CallContext] = []

        def halve(ctx: CallContext) -> float:
            seen.append(ctx)
            return 0.5

        self.device.scale_for = halve
        ctx = CallContext(transport="modbus", peer="192.0.2.7")
        em = self.device.core.call("EM.GetStatus", {"id": 0}, ctx)
        self.check_em(RegisterWindow(1000, self.map.read(1000, 80, ctx)), em, T0 - 0.4)
        self.assertEqual(seen[-1], ctx)
        self.assertEqual(float32_from_cdab(self.map.read(1020, 2, ctx)), f32(231.2))  # not scaled

    def test_unnamed_device_reads_empty_name(self) -> None:
        device, _ = make_device(name=None)
        self.assertEqual(RegisterMap(device).read(16, 32), [0] * 32)


class MonophaseMapTests(SynchronousTestCase, SpecChecks):
    def setUp(self) -> None:
        self.device, self.clock = make_device(profile="monophase")
        self.map = RegisterMap(self.device)

    def test_em1_and_em1data_equal_rpc(self) -> None:
        em1 = [self.device.core.call("EM1.GetStatus", {"id": i}, CTX) for i in range(3)]
        em1data = [self.device.core.call("EM1Data.GetStatus", {"id": i}, CTX) for i in range(3)]
        self.check_em1(RegisterWindow(2000, self.map.read(2000, 60)), em1, T0 - 0.4)
        self.check_em1data(RegisterWindow(2300, self.map.read(2300, 60)), em1data, T0 - 0.4)
        self.check_device_info(RegisterWindow(0, self.map.read(0, 48)), self.device)

    def test_profile_probe_addresses(self) -> None:
        # Victron: monophase answers 32000 and refuses 31000 (§4.4).
        for address in (1000, 1160, 2060, 2360):
            with self.assertRaises(ModbusIllegalAddress):
                self.map.read(address, 2)
        self.assertEqual(len(self.map.read(2000, 2)), 2)

    def test_stale_meter(self) -> None:
        self.clock.advance(11)
        with self.assertRaises(ModbusDeviceFailure):
            self.map.read(2007, 2)
        self.assertEqual(len(self.map.read(2300, 60)), 60)


def request(tid: int, unit: int, function_code: int, address: int, count: int) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, function_code, address, count)


def parse_responses(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Split ``data`` into (tid, unit, function code, rest of PDU)."""
    out = []
    while data:
        tid, pid, length, unit = struct.unpack(">HHHB", data[:7])
        assert pid == 0
        pdu, data = data[7:6 + length], data[6 + length:]
        out.append((tid, unit, pdu[0], pdu[1:]))
    return out


class ProtocolTests(SynchronousTestCase):
    def connect(self, **factory_kw: Any) -> tuple[Protocol, StringTransport, ShellyDevice]:
        device, self.clock = make_device()
        factory = ModbusTcpFactory(RegisterMap(device), **factory_kw)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, device

    def test_read_input_registers(self) -> None:
        proto, transport, device = self.connect()
        proto.dataReceived(request(7, 1, 4, 1013, 2))
        [(tid, unit, fc, rest)] = parse_responses(transport.value())
        self.assertEqual((tid, unit, fc, rest[0]), (7, 1, 4, 4))
        lo, hi = struct.unpack(">HH", rest[1:])
        self.assertEqual(float32_from_cdab([lo, hi]), f32(-1248.45))

    def test_exceptions_keep_the_connection(self) -> None:
        proto, transport, _ = self.connect()
        proto.dataReceived(request(1, 1, 4, 1100, 2) + request(2, 1, 4, 1000, 0)
                           + request(3, 1, 3, 1000, 2) + request(4, 1, 6, 1000, 1)
                           + request(5, 2, 4, 1000, 2) + request(6, 1, 4, 1000, 2))
        answers = parse_responses(transport.value())
        self.assertEqual([(t, u, fc, rest) for t, u, fc, rest in answers[:5]], [
            (1, 1, 0x84, b"\x02"),   # no such register
            (2, 1, 0x84, b"\x03"),   # count 0
            (3, 1, 0x83, b"\x01"),   # holding registers are not served
            (4, 1, 0x86, b"\x01"),   # writes are not served
            (5, 2, 0x84, b"\x0b"),   # another unit id
        ])
        self.assertEqual(answers[5][:3], (6, 1, 4))
        self.assertFalse(transport.disconnecting)

    def test_stale_meter_answers_device_failure(self) -> None:
        proto, transport, _ = self.connect()
        self.clock.advance(11)
        proto.dataReceived(request(1, 1, 4, 1000, 2) + request(2, 1, 4, 1162, 2))
        answers = parse_responses(transport.value())
        self.assertEqual(answers[0][2:], (0x84, b"\x04"))
        self.assertEqual(answers[1][2], 4)

    def test_frame_split_across_segments(self) -> None:
        proto, transport, _ = self.connect()
        frame = request(9, 1, 4, 0, 6)
        proto.dataReceived(frame[:3])
        proto.dataReceived(frame[3:9])
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(frame[9:])
        [(tid, _, fc, rest)] = parse_responses(transport.value())
        self.assertEqual((tid, fc), (9, 4))
        registers = list(struct.unpack(">6H", rest[1:]))
        self.assertEqual(string_from_swapped(registers), MAC)

    def test_holding_registers_when_enabled(self) -> None:
        proto, transport, _ = self.connect(holding_registers=True)
        proto.dataReceived(request(1, 1, 3, 1013, 2) + request(2, 1, 4, 1013, 2))
        first, second = parse_responses(transport.value())
        self.assertEqual(first[2], 3)
        self.assertEqual(first[3], second[3])

    def test_other_unit_id_when_configured(self) -> None:
        proto, transport, _ = self.connect(unit_id=3)
        proto.dataReceived(request(1, 1, 4, 1013, 2) + request(2, 3, 4, 1013, 2))
        first, second = parse_responses(transport.value())
        self.assertEqual(first[2:], (0x84, b"\x0b"))
        self.assertEqual(second[2], 4)

    def test_garbage_closes_the_connection(self) -> None:
        proto, transport, _ = self.connect()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_map_bug_answers_device_failure(self) -> None:
        proto, transport, device = self.connect()

        def broken(ctx: CallContext) -> float:
            raise ZeroDivisionError("bug")

        device.scale_for = broken
        proto.dataReceived(request(1, 1, 4, 1013, 2) + request(2, 1, 4, 0, 6))
        answers = parse_responses(transport.value())
        self.assertEqual(answers[0][2:], (0x84, b"\x04"))
        self.assertEqual(answers[1][2], 4)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
