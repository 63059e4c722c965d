"""The modbus source's pure part: register decoding, read plans, presets and SunSpec maps."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from meteremu.sources.modbus.options import ModbusRegister
from meteremu.sources.modbus.parse import RegisterMap, ValueRefused
from meteremu.sources.modbus.presets import PRESETS
from meteremu.sources.modbus.registers import MAX_REGISTERS, Block, RegisterProblem, decode, plan
from meteremu.sources.modbus.sunspec import meter_map, model_points
from tests.support.fuzz import fuzz_settings


def regs(fmt: str, value: float) -> list[int]:
    raw = struct.pack(fmt, value)
    return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]


class DecodeTests(SynchronousTestCase):
    def test_types(self):
        self.assertEqual(decode([0xFFFE], "int16"), -2.0)
        self.assertEqual(decode([0xFFFE], "uint16"), 65534.0)
        self.assertEqual(decode([0xFFFF, 0xFFFE], "int32"), -2.0)
        self.assertEqual(decode([0x0001, 0x0000], "uint32"), 65536.0)
        self.assertEqual(decode(regs(">f", 230.5), "float32"), 230.5)

    def test_word_and_byte_order(self):
        big = regs(">f", -1234.5)
        self.assertEqual(decode(list(reversed(big)), "float32", word_order="little"), -1234.5)
        swapped = [int.from_bytes(r.to_bytes(2, "big"), "little") for r in big]
        self.assertEqual(decode(swapped, "float32", byte_order="little"), -1234.5)
        self.assertEqual(decode([0x0000, 0x0001], "uint32", word_order="little"), 65536.0)
        self.assertEqual(decode([0x3412], "uint16", byte_order="little"), 0x1234)

    def test_nan_and_bad_registers_are_refused(self):
        self.assertRaises(RegisterProblem, decode, [0x7FC0, 0x0000], "float32")
        self.assertRaises(RegisterProblem, decode, [0x7F80, 0x0000], "float32")
        self.assertRaises(RegisterProblem, decode, [1], "float32")
        self.assertRaises(RegisterProblem, decode, [0x10000], "uint16")

    @given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2), st.sampled_from(["big", "little"]),
           st.sampled_from(["big", "little"]))
    @fuzz_settings(300)
    def test_any_registers_decode_or_are_refused(self, registers, words, order):
        for kind in ("int32", "uint32", "float32"):
            try:
                decode(registers, kind, words, order)
            except RegisterProblem:
                pass


class PlanTests(SynchronousTestCase):
    def test_neighbours_share_a_request(self):
        self.assertEqual(plan([("input", 0, 2), ("input", 2, 2), ("input", 10, 2)], max_gap=16),
                         [Block("input", 0, 12)])

    def test_gaps_and_tables_split(self):
        self.assertEqual(plan([("input", 0, 2), ("input", 40, 2), ("holding", 0, 1)], max_gap=16),
                         [Block("input", 0, 2), Block("input", 40, 2), Block("holding", 0, 1)])

    def test_no_request_is_longer_than_modbus_allows(self):
        blocks = plan([("holding", a, 2) for a in range(0, 400, 2)], max_gap=16)
        self.assertTrue(all(b.count <= MAX_REGISTERS for b in blocks))
        self.assertEqual(sum(b.count for b in blocks), 400)

    def test_the_presets_are_batched(self):
        sdm = RegisterMap(tuple((k, 0, r) for k, r in PRESETS["sdm630"].items()), 16)
        self.assertEqual(sdm.blocks, [Block("input", 0, 36), Block("input", 70, 6)])
        dtsu = RegisterMap(tuple((k, 0, r) for k, r in PRESETS["dtsu666"].items()), 16)
        # energy 0x101E..0x1029, 0x2006..0x2019, power factors 0x202C..0x2031, frequency 0x2044
        self.assertEqual(len(dtsu.blocks), 4)


class MapTests(SynchronousTestCase):
    def test_values_scaled_to_a_reading(self):
        regmap = RegisterMap((("a_power", 0, ModbusRegister(0, "input", "int32", word_order="little", scale=0.1)),
                              ("a_voltage", 0, ModbusRegister(2, "input", "uint16", scale=0.1)),
                              ("energy_import", 0, ModbusRegister(3, "input", "uint32", unit="kWh", scale=0.01))))
        blocks = regmap.blocks
        power = regs(">i", -12345)
        data = [list(reversed(power)) + [2301] + regs(">I", 123456)]
        reading = regmap.reading(blocks, data, 1.0, 100_000.0, invert=False)
        self.assertAlmostEqual(reading.phases[0].act_power, -1234.5)
        self.assertAlmostEqual(reading.phases[0].voltage, 230.1)
        self.assertAlmostEqual(reading.energy[0][0], 1234560.0)

    def test_out_of_range_is_refused_naming_the_key(self):
        regmap = RegisterMap((("a_power", 0, ModbusRegister(0, "input", "float32")),))
        with self.assertRaisesRegex(ValueRefused, "a_power"):
            regmap.reading(regmap.blocks, [regs(">f", 2e6)], 1.0, 100_000.0, invert=False)

    def test_scale_factor_registers(self):
        regmap = RegisterMap((("a_power", 0, ModbusRegister(0, "holding", "int16", scale_register=1)),))
        reading = regmap.reading(regmap.blocks, [[1234, 0xFFFF]], 1.0, 100_000.0, invert=False)  # SF -1
        self.assertAlmostEqual(reading.phases[0].act_power, 123.4)
        with self.assertRaisesRegex(ValueRefused, "scale factor"):
            regmap.reading(regmap.blocks, [[1234, 0x8000]], 1.0, 100_000.0, invert=False)
        with self.assertRaisesRegex(ValueRefused, "does not implement"):
            regmap.reading(regmap.blocks, [[0x8000, 0]], 1.0, 100_000.0, invert=False)


class SunSpecMapTests(SynchronousTestCase):
    def test_model_203_offsets_come_from_pysunspec2(self):
        points = model_points(203)
        # The SunSpec model 203 (wye meter): W is the 19th register, W_SF the 23rd.
        self.assertEqual((points["W"][0], points["W_SF"][0], points["TotWhImp"][0]), (18, 22, 46))
        regmap = meter_map(203, 40070, 16)
        found = {key: r for key, _, r in regmap.items}
        self.assertEqual((found["a_power"].address, found["a_power"].scale_register), (40089, 40092))
        self.assertEqual(found["energy_import"].type, "uint32")
        self.assertEqual(found["a_pf"].unit, "%")

    def test_every_meter_model_maps(self):
        for model in (201, 202, 203, 204):
            keys = {key for key, _, _ in meter_map(model, 40000, 16).items}
            self.assertIn("frequency", keys)
            self.assertTrue({"power", "a_power"} & keys)


class FuzzTests(SynchronousTestCase):
    @given(st.lists(st.integers(0, 0xFFFF), min_size=76, max_size=76))
    @fuzz_settings(200)
    def test_any_sdm630_image_is_a_reading_or_refused(self, registers):
        regmap = RegisterMap(tuple((k, 0, r) for k, r in PRESETS["sdm630"].items()), 16)
        blocks = regmap.blocks
        data = [registers[b.address:b.address + b.count] for b in blocks]
        try:
            reading = regmap.reading(blocks, data, 1.0, 100_000.0, invert=False)
        except ValueRefused:
            return
        for phase in reading.phases:
            self.assertLessEqual(abs(phase.act_power), 100_000.0)
            self.assertLessEqual(abs(phase.pf), 1.0)
