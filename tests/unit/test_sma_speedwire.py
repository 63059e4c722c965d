"""SMA Energy Meter datagrams, checked by pysma-plus' decoder (never by our own)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from meteremu.devices.shelly.options import FallbackPolicy
from meteremu.devices.sma.device import SmaEnergyMeter, serial_from_key
from meteremu.devices.sma.options import Options
from meteremu.devices.sma.speedwire import encode
from meteremu.devices.stale import Unavailable
from meteremu.meter import Meter
from meteremu.reading import PhaseReading, Reading
from tests.support import FIXTURES, sample_reading
from tests.support.fuzz import fuzz_settings
from tests.support.speedwire import decode


def real_datagram() -> bytes:
    """A real Energy Meter's datagram (tests/fixtures/sma/README.md)."""
    with open(f"{FIXTURES}/sma/energy_meter_270.hex", encoding="ascii") as handle:
        return bytes.fromhex(handle.read().strip())


def layout(datagram: bytes) -> list[bytes]:
    """The OBIS ids (4 bytes each) in order, walked by the tag length of the datagram itself."""
    end = 16 + int.from_bytes(datagram[12:14], "big")
    pos, ids = 28, []
    while pos < end:
        obis = datagram[pos:pos + 4]
        ids.append(obis)
        pos += 4 + (obis[2] if obis[0] != 0x90 else 4)
    return ids


ENERGY = [(1000.5, 20.25), (0.0, 3.5), (7.0, 0.0)]
PHASE_BLOCKS = (21, 41, 61)


class EncodeTests(TestCase):
    def test_decoded_by_pysma_plus(self):
        reading = sample_reading()  # 2166.2, 3.6, -244.0 W
        data = decode(encode(349, 1901234567, 123456, reading, ENERGY))
        self.assertEqual((data["susyid"], data["serial"], data["protocolID"]), (349, 1901234567, 0x6069))
        total = reading.total_act_power
        self.assertEqual(data["1:4:0"], round(total * 10))
        self.assertEqual(data["2:4:0"], 0)
        self.assertEqual(data["1:8:0"], round(sum(e[0] for e in ENERGY) * 3600))
        self.assertEqual(data["2:8:0"], round(sum(e[1] for e in ENERGY) * 3600))
        self.assertEqual(data["14:4:0"], 49900)
        self.assertEqual(data["sw_version"], "1.2.4.R")
        for block, phase, (imp, exp) in zip(PHASE_BLOCKS, reading.phases, ENERGY, strict=True):
            power = phase.act_power
            self.assertEqual(data[f"{block}:4:0"], round(max(power, 0) * 10))
            self.assertEqual(data[f"{block + 1}:4:0"], round(max(-power, 0) * 10))
            self.assertEqual(data[f"{block}:8:0"], round(imp * 3600))
            self.assertEqual(data[f"{block + 1}:8:0"], round(exp * 3600))
            self.assertEqual(data[f"{block + 10}:4:0"], round(phase.current * 1000))
            self.assertEqual(data[f"{block + 11}:4:0"], round(phase.voltage * 1000))
            self.assertEqual(data[f"{block + 12}:4:0"], round(abs(phase.pf) * 1000))

    def test_every_channel_of_the_meter_is_there(self):
        """The channel set of a real meter (pysma-plus' table of 0x6069 channels)."""
        from pysmaplus.definitions_em import obis2sensor

        data = decode(encode(270, 1, 0, sample_reading(), ENERGY))
        self.assertEqual({s.key for s in obis2sensor} - set(data), set())

    def test_export_goes_to_the_export_channels(self):
        reading = Reading(phases=(PhaseReading.from_power(-1500.0, voltage=230.0),), measured_at=1.0)
        data = decode(encode(270, 1, 0, reading, []))
        self.assertEqual((data["1:4:0"], data["2:4:0"], data["22:4:0"]), (0, 15000, 15000))

    def test_non_finite_readings_are_not_sent(self):
        reading = Reading(phases=(PhaseReading(230.0, 1.0, math.nan, 230.0, 1.0, 50.0),), measured_at=1.0)
        self.assertRaises(Unavailable, encode, 270, 1, 0, reading, [])

    @given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
           st.integers(0, 2**40))
    @fuzz_settings(200)
    def test_any_power_is_decoded_or_refused(self, powers, tick):
        """Whatever a source reports, the datagram decodes, or nothing is sent."""
        reading = Reading(phases=tuple(PhaseReading.from_power(p, voltage=230.0) for p in powers),
                          measured_at=1.0)
        try:
            datagram = encode(270, 4294967295, tick, reading, ENERGY)
        except Unavailable:
            return
        data = decode(datagram)
        self.assertEqual(data["serial"], 4294967295)
        self.assertTrue(0 <= data["1:4:0"] <= 0xFFFFFFFF)


class RealMeterLayoutTests(TestCase):
    """Our datagram against a real meter's (nymea's capture): same framing, same channels in order."""

    def test_the_capture_decodes_with_pysma_plus(self):
        data = decode(real_datagram())
        self.assertEqual((data["susyid"], data["serial"], data["sw_version"]), (270, 1900243374, "1.2.8.R"))
        self.assertEqual(data["32:4:0"], 228299)  # 228.299 V on L1

    def test_same_framing_and_channel_order(self):
        real = real_datagram()
        ours = encode(270, 1900243374, 0, sample_reading(), ENERGY, sw_version=(1, 2, 8, "R"))
        self.assertEqual(ours[:12], real[:12])  # SMA\0, tag 0x02A0, group 1
        self.assertEqual(ours[14:20], real[14:20])  # tag 0x0010, protocol 0x6069, SUSy id
        self.assertEqual(ours[-12:], real[-12:])  # software version channel, end-of-data tag
        # The same channels in the same order; ours adds 14:4 (frequency), which
        # this older meter does not send: 608 bytes instead of 600, as newer meters send.
        expected = layout(real)
        expected.insert(expected.index(bytes((0, 13, 4, 0))) + 1, bytes((0, 14, 4, 0)))
        self.assertEqual(layout(ours), expected)
        self.assertEqual(len(ours), len(real) + 8)


class DeviceTests(TestCase):
    def meter(self, clock: Clock, **kw: object) -> SmaEnergyMeter:
        meter = Meter("grid", clock, stale_after=10.0, source_type="test")
        return SmaEnergyMeter(Options(**kw), 1900000001, meter, clock)  # type: ignore[arg-type]

    def test_silent_while_stale_under_error(self):
        clock = Clock()
        device = self.meter(clock)
        self.assertIsNone(device.datagram())
        self.assertIn("grid", device.silent_reason)
        device.meter.update(sample_reading())
        self.assertEqual(decode(device.datagram())["serial"], 1900000001)
        clock.advance(11)
        self.assertIsNone(device.datagram())

    def test_fallback_is_sent_while_stale(self):
        device = self.meter(Clock(), on_stale=FallbackPolicy(100.0))
        self.assertEqual(decode(device.datagram())["1:4:0"], 1000)

    def test_serials_and_options(self):
        self.assertTrue(1_000_000_000 <= serial_from_key("FFFFFFFFFFFF") <= 0xFFFFFFFF)
        errors = dict(Options(serial=0, susy_id=70000, destinations=("nowhere", "0.0.0.0"), ttl=0,
                              interval=0.0).validate())
        self.assertEqual(set(errors), {"serial", "susy_id", "destinations", "ttl", "interval"})
