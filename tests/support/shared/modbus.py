"""What the unit and integration tests of modbus share (helpers, data)."""

from __future__ import annotations

import math
import struct
from typing import Any

from twisted.internet.task import Clock

from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.identity import make_identity
from meteremu.devices.shelly.modbus_map import (
    float32_from_cdab,
    string_from_swapped,
    uint32_from_cdab,
)
from meteremu.devices.shelly.options import Options
from meteremu.devices.shelly.rpc import CallContext
from meteremu.meter import Meter
from meteremu.reading import PhaseReading, Reading

T0 = 1_700_000_000.0


MAC = "AABBCCDDEEFF"


CTX = CallContext(transport="http")


# A house exporting on B: the total is negative. Lifetime counters large enough
# that float32 rounding shows (2589773.39 is not exact in float32).
PHASE_READINGS = (
    PhaseReading.from_power(1234.5, voltage=231.2, pf=0.93, freq=50.02),
    PhaseReading.from_power(-2500.25, voltage=229.8, pf=0.98, freq=50.02),
    PhaseReading.from_power(17.3, voltage=230.4, pf=0.5, freq=50.02),
)


ENERGY = ((2589773.39, 35.19), (90579.48, 1201.5), (652717.23, 0.0))


EM_FLOATS = {1007: "n_current", 1011: "total_current", 1013: "total_act_power",
             1015: "total_aprt_power"}


EM_BOOLS = [1002, 1003, 1004, 1005, 1006, 1009, 1010] + [
    1020 + 20 * i + k for i in range(3) for k in (10, 11, 12)]


EM_RESERVED = [1017, 1018, 1019] + [1020 + 20 * i + k for i in range(3) for k in range(15, 20)]


EMDATA_FLOATS = {1162: "total_act", 1164: "total_act_ret"}


EMDATA_RESERVED = [1166, 1167, 1168, 1169] + [1170 + 20 * i + k for i in range(3)
                                              for k in range(16, 20)]


EM1_FLOATS = {3: "voltage", 5: "current", 7: "act_power", 9: "aprt_power", 11: "pf", 16: "freq"}


EM1_BOOLS = [2, 13, 14, 15]


EM1DATA_FLOATS = {2: "total_act_energy", 4: "total_act_ret_energy",
                  10: "total_act_energy", 12: "total_act_ret_energy"}


def f32(value: float) -> float:
    """``value`` as it survives a float32."""
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def make_device(profile: str = "triphase", on_stale: Any = "error",
                name: str | None = "Meter Emu") -> tuple[ShellyDevice, Clock]:
    clock = Clock()
    clock.advance(T0)
    meter = Meter("grid", clock, stale_after=10.0)
    options = Options(profile=profile, name=name, on_stale=on_stale)  # type: ignore[arg-type]
    device = ShellyDevice(options, make_identity(options, MAC), meter, clock)
    meter.update(Reading(phases=PHASE_READINGS, measured_at=T0 - 0.4, energy=ENERGY))
    return device, clock


class RegisterWindow:
    """Registers read from ``start``, indexed by wire address."""

    def __init__(self, start: int, registers: list[int]) -> None:
        self.start, self.registers = start, registers

    def words(self, address: int, count: int) -> list[int]:
        offset = address - self.start
        return self.registers[offset:offset + count]

    def float(self, address: int) -> float:
        return float32_from_cdab(self.words(address, 2))

    def uint32(self, address: int) -> int:
        return uint32_from_cdab(self.words(address, 2))

    def text(self, address: int, count: int) -> str:
        return string_from_swapped(self.words(address, count))


class SpecChecks:
    """Assertions shared by the map tests and the over-the-wire tests."""

    def assertFloatField(self, window: RegisterWindow, address: int, expected: float | None,
                         label: str) -> None:
        value = window.float(address)
        if expected is None:
            self.assertTrue(math.isnan(value), f"{label} at {address}: {value} is not NaN")
        else:
            self.assertEqual(value, f32(expected), f"{label} at {address}")

    def check_device_info(self, window: RegisterWindow, device: ShellyDevice) -> None:
        self.assertEqual(window.text(0, 6), MAC)
        self.assertEqual(window.text(6, 10), "SPEM-003CEBEU")
        self.assertEqual(window.text(16, 32), device.identity.name or "")
        # Swapped bytes: big-endian, the model reads scrambled (§4, modbus2mqtt#91).
        raw = b"".join(struct.pack(">H", r) for r in window.words(6, 10)).rstrip(b"\0")
        self.assertEqual(raw, b"PSME0-30ECEB\0U")

    def check_em(self, window: RegisterWindow, em: dict[str, Any], measured_at: float) -> None:
        self.assertEqual(window.uint32(1000), int(measured_at))
        for address, key in EM_FLOATS.items():
            self.assertFloatField(window, address, em[key], key)
        for address in EM_BOOLS:
            self.assertEqual(window.words(address, 1), [0], f"bool at {address}")
        for address in EM_RESERVED:
            self.assertEqual(window.words(address, 1), [0], f"reserved {address}")

    def check_emdata(self, window: RegisterWindow, emdata: dict[str, Any], measured_at: float) -> None:
        self.assertEqual(window.uint32(1160), int(measured_at))
        for address, key in EMDATA_FLOATS.items():
            self.assertFloatField(window, address, emdata[key], key)
        for address in EMDATA_RESERVED:
            self.assertEqual(window.words(address, 1), [0], f"reserved {address}")

    def check_em1(self, window: RegisterWindow, statuses: list[dict[str, Any]],
                  measured_at: float) -> None:
        for index, status in enumerate(statuses):
            base = 2000 + 20 * index
            self.assertEqual(window.uint32(base), int(measured_at))
            for offset, key in EM1_FLOATS.items():
                self.assertFloatField(window, base + offset, status[key], f"em1:{index}.{key}")
            for offset in EM1_BOOLS:
                self.assertEqual(window.words(base + offset, 1), [0])
            self.assertEqual(window.words(base + 18, 2), [0, 0])

    def check_em1data(self, window: RegisterWindow, statuses: list[dict[str, Any]],
                      measured_at: float) -> None:
        for index, status in enumerate(statuses):
            base = 2300 + 20 * index
            self.assertEqual(window.uint32(base), int(measured_at))
            for offset, key in EM1DATA_FLOATS.items():
                self.assertFloatField(window, base + offset, status[key], f"em1data:{index}.{key}")
            self.assertEqual(window.words(base + 14, 6), [0] * 6)
