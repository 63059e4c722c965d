"""Kamstrup KMP: the codec against the KMP document's worked examples
(shared/specs/sources-sinks.md §3, checks 16-19), then a fake MULTICAL on a
real pseudo-terminal → KamstrupSource → a phaseless Meter → Shelly and /metrics."""

from __future__ import annotations

from decimal import Decimal

from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, parse_config
from meteremu.sources.kamstrup import kmp
from meteremu.sources.kamstrup.parse import DEFAULT_REGISTERS, register_extras, resolve_register
from tests.support.p1 import register_sources
from tests.support.shared.kamstrup import h


class CrcTests(SynchronousTestCase):
    def test_vectors(self):
        # Check 16.
        self.assertEqual(kmp.crc16(h("3F01")), 0x058A)
        self.assertEqual(kmp.crc16(h("3F02")), 0x35E9)
        self.assertEqual(kmp.crc16(h("3F10010080")), 0xD408)
        self.assertEqual(kmp.crc16(h("3F0201234567E956")), 0)


class EncodeTests(SynchronousTestCase):
    def test_requests(self):
        # Check 17 and the other worked frames of §3.
        self.assertEqual(kmp.get_register_request([0x0080]), h("803F1001001B7FD4080D"))
        self.assertEqual(kmp.get_type_request(), h("803F01058A0D"))
        self.assertEqual(kmp.get_register_request([0x003C]), h("803F1001003CB25F0D"))
        self.assertEqual(kmp.get_register_request([0x3C, 0x44, 0x4A, 0x50, 0x56]),
                         h("803F1005003C0044004A005000562AD30D"))

    def test_request_limits(self):
        self.assertRaises(kmp.KmpError, kmp.get_register_request, [])
        self.assertRaises(kmp.KmpError, kmp.get_register_request, list(range(9)))
        self.assertRaises(kmp.KmpError, kmp.get_register_request, [0x10000])


class DecodeTests(SynchronousTestCase):
    def test_kamstrup_document_response(self):
        # Check 18.
        raw = h("403F10001B7F160411012AF02463030D")
        self.assertEqual(kmp.unstuff(raw[1:-1]), h("3F100080160411012AF0246303"))
        frame = kmp.decode_frame(raw)
        self.assertEqual((frame.address, frame.cid), (0x3F, 0x10))
        [value] = kmp.decode_registers(frame.data).values()
        self.assertEqual((value.register, value.unit, kmp.UNITS[value.unit]), (0x0080, 0x16, "kW"))
        self.assertEqual(value.value, Decimal(19591204) * Decimal(10) ** 17)

    def test_numbers(self):
        # Check 19: exact as Decimal.
        vectors = {"04C200003039": Decimal("-123.45"), "040305397FB1": Decimal("87654321000"),
                   "0103FF": Decimal("255000"), "0443000000FB": Decimal("0.251"),
                   "024218C8": Decimal("63.44")}
        for data, expected in vectors.items():
            self.assertEqual(kmp.decode_number(h(data)), expected, data)
            self.assertEqual(kmp.decode_number(kmp.encode_number(expected)), expected, data)
        self.assertEqual(kmp.encode_number(Decimal("-123.45")), h("04C200003039"))
        for bad in ("", "00", "0403", "0403000000", "01030000"):
            self.assertRaises(kmp.KmpError, kmp.decode_number, h(bad))

    def test_stuffing_round_trip_including_pykmps_case(self):
        # PyKMP 0.0.2 decodes 40 3F 1B E4 F9 0D as 3F 06; the right answer is 3F 1B F9.
        self.assertEqual(kmp.stuff(h("3F1BF9")), h("3F1BE4F9"))
        self.assertEqual(kmp.unstuff(h("3F1BE4F9")), h("3F1BF9"))
        every = bytes(range(256))
        self.assertEqual(kmp.unstuff(kmp.stuff(every)), every)
        stuffed = kmp.stuff(every)
        for special in (0x06, 0x0D, 0x40, 0x80):
            self.assertNotIn(special, stuffed)
        body = h("3F1001") + bytes((0x06, 0x0D, 0x1B, 0x40, 0x80))
        frame = kmp.encode_frame(body, kmp.START_FROM_METER)
        self.assertEqual(kmp.decode_frame(frame).data, bytes((0x01, 0x06, 0x0D, 0x1B, 0x40, 0x80)))

    def test_errors(self):
        good = h("403F10001B7F160411012AF02463030D")
        self.assertRaises(kmp.KmpError, kmp.decode_frame, good[:-2] + h("040D"))  # CRC
        self.assertRaises(kmp.KmpError, kmp.decode_frame, good[1:])  # no start byte
        self.assertRaises(kmp.KmpError, kmp.unstuff, h("3F1B00"))  # not an escape
        self.assertRaises(kmp.KmpError, kmp.unstuff, h("3F1B"))  # dangling
        self.assertRaises(kmp.KmpError, kmp.decode_frame, h("403F0D"))  # too short
        self.assertRaises(kmp.KmpError, kmp.decode_registers, h("003C0804"))  # truncated
        with self.assertRaises(kmp.KmpError) as caught:
            kmp.decode_frame(good[:-2] + h("040D"))
        self.assertIn("CRC mismatch", str(caught.exception))


class FrameReaderTests(SynchronousTestCase):
    def test_echo_split_ack_and_noise(self):
        request = kmp.get_register_request([0x0080])
        reply = h("403F10001B7F160411012AF02463030D")
        reader = kmp.FrameReader()
        out = []
        stream = request + b"\x00noise" + reply + bytes((kmp.ACK,)) + reply
        for i in range(0, len(stream), 3):
            out += reader.feed(stream[i:i + 3])
        self.assertEqual(out, [reply, bytes((kmp.ACK,)), reply])
        self.assertEqual(reader.skipped, len(request) + len(b"\x00noise"))

    def test_cut_frame_and_oversize(self):
        reader = kmp.FrameReader()
        reply = h("403F10001B7F160411012AF02463030D")
        self.assertEqual(reader.feed(reply[:6] + reply), [reply])
        self.assertEqual(reader.feed(b"\x40" + b"\x01" * (kmp.MAX_FRAME + 10)), [])
        self.assertEqual(reader.feed(reply), [reply])


class MappingTests(SynchronousTestCase):
    def test_units_are_converted(self):
        values = kmp.decode_registers(kmp.encode_registers([
            (0x003C, 0x08, "240.860"), (0x0044, 0x28, "1234.56"), (0x004A, 0x2A, "1.549"),
            (0x0050, 0x16, "12.3"), (0x0056, 0x25, "55.12"), (0x0057, 0x25, "32.4"),
            (0x0059, 0x26, "22.72"), (0x03EC, 0x2E, "45678")]))
        extras = register_extras(values, [resolve_register(n) for n in DEFAULT_REGISTERS])
        self.assertAlmostEqual(extras.pop("heat_energy_kwh"), 66905.556, places=3)
        self.assertEqual(extras, {"volume_m3": 1234.56, "flow_lph": 1549.0, "heat_power_w": 12300.0,
                                  "temp_inlet_c": 55.12, "temp_outlet_c": 32.4, "temp_diff_k": 22.72,
                                  "operating_hours": 45678.0})

    def test_other_units_and_raw_registers(self):
        values = kmp.decode_registers(kmp.encode_registers([
            (0x003C, 0x03, "12.5"), (0x0044, 0x27, "1500"),
            (0x0050, 0x2E, "3"), (0x0080, 0x16, "4.2")]))
        wanted = [resolve_register(n) for n in ("heat_energy", "volume", "power", "0x0080")]
        extras = register_extras(values, wanted)
        self.assertEqual(extras, {"heat_energy_kwh": 12500.0, "volume_m3": 1.5, "heat_power_w_h": 3.0,
                                  "register_0080_kw": 4.2})
        self.assertEqual(resolve_register("1004").key, "operating_hours")
        self.assertRaises(ValueError, resolve_register, "nope")


class OptionsTests(SynchronousTestCase):
    def setUp(self):
        register_sources(self)

    def parse(self, **source):
        data = {"meters": {"heat": {"source": {"type": "kamstrup", **source}}}, "devices": []}
        return parse_config(data, "t.yaml", env={}).meters["heat"].source.options

    def test_defaults(self):
        options = self.parse(serial="/dev/ttyUSB0")
        self.assertEqual((options.interval, options.baudrate, options.stopbits), (3600.0, 1200, 2))
        self.assertEqual(options.registers, DEFAULT_REGISTERS)
        options = self.parse(tcp="ser2net:4001", registers=["heat_energy", 0x3EC], interval="15m")
        self.assertEqual([r.key for r in options.register_list()], ["heat_energy_kwh", "operating_hours"])

    def test_errors(self):
        for source, key in [({}, "serial"), ({"serial": "/dev/x", "registers": ["nope"]}, "registers[0]"),
                            ({"serial": "/dev/x", "registers": []}, "registers"),
                            ({"serial": "/dev/x", "registers": ["flow", "0x004A"]}, "registers"),
                            ({"serial": "/dev/x", "baudrate": 1234}, "baudrate"),
                            ({"serial": "/dev/x", "stopbits": 3}, "stopbits")]:
            with self.assertRaises(ConfigError) as caught:
                self.parse(**source)
            self.assertEqual(caught.exception.key, f"meters.heat.source.{key}", source)
