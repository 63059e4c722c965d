"""The sma_energy_meter source's pure decoder and its datagram handling (no sockets).

The decoder is checked against pysma-plus' (tests.support.speedwire), on a
real meter's datagram (tests/fixtures/sma/README.md) and on fuzzed ones;
meteremu's own SMA face (the encoder) provides the datagrams of known readings.
"""

from __future__ import annotations

import math
import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from meteremu.devices.sma.speedwire import encode
from meteremu.meter import Meter
from meteremu.reading import PhaseReading, Reading
from meteremu.sources.sma_energy_meter.options import SmaEnergyMeterOptions
from meteremu.sources.sma_energy_meter.parse import (
    NOMINAL_FREQUENCY,
    DatagramError,
    MeterFrame,
    ValueRefused,
    decode,
    reading,
)
from meteremu.sources.sma_energy_meter.source import SmaEnergyMeterSource
from tests.support import FIXTURES, sample_reading
from tests.support.fuzz import fuzz_settings
from tests.support.speedwire import decode as pysma_decode

ENERGY = [(1000.5, 20.25), (0.0, 3.5), (7.0, 0.0)]
SENDER = ("192.0.2.7", 9522)


def real_datagram() -> bytes:
    with open(f"{FIXTURES}/sma/energy_meter_270.hex", encoding="ascii") as handle:
        return bytes.fromhex(handle.read().strip())


def ours(serial: int = 1900000001, reading_: Reading | None = None, tick: int = 0) -> bytes:
    return encode(270, serial, tick, reading_ or sample_reading(), ENERGY)


def decoded(datagram: bytes) -> MeterFrame:
    frame = decode(datagram)
    assert frame is not None
    return frame


def same_as_pysma(case: TestCase, datagram: bytes) -> None:
    frame = decoded(datagram)
    theirs = pysma_decode(datagram)
    case.assertEqual((frame.susy_id, frame.serial, frame.sw_version),
                     (theirs["susyid"], theirs["serial"], theirs.get("sw_version")))
    channels = {k: v for k, v in theirs.items() if k.count(":") == 2 and k.endswith(":0")}
    case.assertEqual({f"{i}:{t}:0": v for (i, t), v in frame.channels.items()}, channels)


class DecoderTests(TestCase):
    def test_the_real_meter_decodes_as_pysma_plus_decodes_it(self):
        same_as_pysma(self, real_datagram())

    def test_the_real_meters_reading(self):
        frame = decoded(real_datagram())
        self.assertEqual((frame.susy_id, frame.serial, frame.sw_version), (270, 1900243374, "1.2.8.R"))
        theirs = pysma_decode(real_datagram())
        sample = reading(frame, 5.0, 100_000.0)
        self.assertEqual(len(sample.phases), 3)
        for phase, block in zip(sample.phases, (21, 41, 61), strict=True):
            self.assertAlmostEqual(phase.act_power, (theirs[f"{block}:4:0"] - theirs[f"{block + 1}:4:0"]) / 10)
            self.assertAlmostEqual(phase.voltage, theirs[f"{block + 11}:4:0"] / 1000)
            self.assertAlmostEqual(phase.current, theirs[f"{block + 10}:4:0"] / 1000)
            # This firmware (1.2.8) sends no frequency: the nominal one, as the DSMR source.
            self.assertEqual(phase.freq, NOMINAL_FREQUENCY)
        self.assertAlmostEqual(sample.phases[0].voltage, 228.299)
        assert sample.energy is not None
        for (imported, exported), block in zip(sample.energy, (21, 41, 61), strict=True):
            self.assertAlmostEqual(imported, theirs[f"{block}:8:0"] / 3600)
            self.assertAlmostEqual(exported, theirs[f"{block + 1}:8:0"] / 3600)
        self.assertEqual(sample.measured_at, 5.0)

    def test_our_face_round_trips(self):
        """meteremu's own SMA face encodes a reading; the source reads it back (to the meter's resolution)."""
        sent = sample_reading()
        got = reading(decoded(ours(reading_=sent)), 1.0, 100_000.0)
        for a, b in zip(got.phases, sent.phases, strict=True):
            self.assertLessEqual(abs(a.act_power - b.act_power), 0.05)
            self.assertLessEqual(abs(a.voltage - b.voltage), 0.0005)
            self.assertLessEqual(abs(a.current - b.current), 0.0005)
            self.assertLessEqual(abs(abs(a.pf) - abs(b.pf)), 0.0005)
            self.assertEqual(math.copysign(1, a.pf), math.copysign(1, b.act_power))
            self.assertAlmostEqual(a.freq, 49.9)
        assert got.energy is not None
        for (i, e), (ei, ee) in zip(got.energy, ENERGY, strict=True):
            self.assertLessEqual(abs(i - ei), 1 / 3600)
            self.assertLessEqual(abs(e - ee), 1 / 3600)

    def test_invert(self):
        got = reading(decoded(ours()), 1.0, 100_000.0, invert=True)
        self.assertLessEqual(abs(got.phases[0].act_power + 2166.2), 0.05)
        assert got.energy is not None
        self.assertApproximates(got.energy[0][0], 20.25, 1 / 3600)  # import and export swap

    def test_another_speedwire_protocol_is_not_a_meter(self):
        data = bytearray(real_datagram())
        data[16:18] = struct.pack(">H", 0x6065)  # an inverter's protocol
        self.assertIsNone(decode(bytes(data)))

    def test_garbage_is_refused(self):
        for junk in (b"", b"SMA", b"HTTP/1.1 200 OK\r\n", b"SMA\0" + b"\xff" * 20, b"SMA\0\0\0\0\0"):
            self.assertRaises(DatagramError, decode, junk)

    def test_every_truncation_is_refused(self):
        real = real_datagram()
        for end in range(len(real) - 4):  # the last 4 bytes are the end-of-data tag, not needed
            with self.subTest(end=end):
                self.assertRaises(DatagramError, decode, real[:end])

    def test_out_of_range_values_are_refused(self):
        huge = Reading(phases=(PhaseReading.from_power(250_000.0, voltage=230.0),), measured_at=1.0)
        with self.assertRaisesRegex(ValueRefused, "L1 power"):
            reading(decoded(encode(270, 1, 0, huge, [])), 1.0, 100_000.0)
        volts = Reading(phases=(PhaseReading.from_power(100.0, voltage=5000.0),), measured_at=1.0)
        with self.assertRaisesRegex(ValueRefused, "L1 voltage"):
            reading(decoded(encode(270, 1, 0, volts, [])), 1.0, 100_000.0)
        hertz = Reading(phases=(PhaseReading.from_power(100.0, freq=99.0),), measured_at=1.0)
        with self.assertRaisesRegex(ValueRefused, "frequency"):
            reading(decoded(encode(270, 1, 0, hertz, [])), 1.0, 100_000.0)

    def test_missing_channels_are_refused(self):
        frame = decoded(ours())
        del frame.channels[(41, 4)]
        with self.assertRaisesRegex(ValueRefused, "L2 power"):
            reading(frame, 1.0, 100_000.0)

    @given(st.binary(max_size=700))
    @fuzz_settings(300)
    def test_any_bytes_decode_or_are_refused(self, data):
        try:
            decode(data)
        except DatagramError:
            pass

    @given(st.data())
    @fuzz_settings(300)
    def test_mutated_real_datagrams_decode_as_pysma_plus_or_are_refused(self, data):
        real = bytearray(real_datagram())
        for _ in range(data.draw(st.integers(1, 4))):
            real[data.draw(st.integers(0, len(real) - 1))] = data.draw(st.integers(0, 255))
        datagram = bytes(real)
        try:
            frame = decode(datagram)
        except DatagramError:
            return
        if frame is None:
            return
        try:
            reading(frame, 1.0, 100_000.0)
        except ValueRefused:
            pass
        # Where both read a well-formed datagram of standard channels, they agree.
        if len(datagram) == 600 and datagram[12:16] == real_datagram()[12:16] and all(
                k[1] in (4, 8) for k in frame.channels):
            try:
                theirs = pysma_decode(datagram)
            except Exception:
                return
            if theirs.get("serial") == frame.serial:
                self.assertEqual(theirs.get("32:4:0"), frame.value(32))


def source(serial: int | None = 1900000001, **kw: object) -> tuple[SmaEnergyMeterSource, Meter, Clock]:
    clock = Clock()
    clock.advance(1000)
    meter = Meter("grid", clock, stale_after=3.0, source_type="sma_energy_meter")
    options = SmaEnergyMeterOptions(serial=serial, mode="unicast", listen="127.0.0.1", **kw)  # type: ignore[arg-type]
    src = SmaEnergyMeterSource(meter, options, clock)  # type: ignore[arg-type]
    src.running = True  # fed directly: no socket in these tests
    return src, meter, clock


class DatagramHandlingTests(TestCase):
    def test_only_the_configured_serial_is_read(self):
        src, meter, _ = source()
        src.datagram(ours(serial=1900000002, reading_=sample_reading(powers=(9.0, 9.0, 9.0))), SENDER)
        self.assertIsNone(meter.latest)
        src.datagram(ours(), SENDER)
        assert meter.latest is not None
        self.assertLessEqual(abs(meter.latest.phases[0].act_power - 2166.2), 0.05)
        self.assertEqual(set(meter.details["heard"]), {"1900000001", "1900000002"})
        self.assertEqual(src.samples, 1)

    def test_without_a_serial_two_meters_mean_down(self):
        src, meter, _ = source(serial=None)
        src.datagram(ours(serial=11), SENDER)
        self.assertEqual(meter.freshness(), "fresh")
        src.datagram(ours(serial=12), SENDER)
        self.assertEqual(meter.freshness(), "down")
        self.assertIn("serials 11, 12", meter.stats.last_error or "")

    def test_garbage_changes_nothing(self):
        src, meter, _ = source()
        src.datagram(ours(), SENDER)
        for junk in (b"\0" * 50, b"SMA\0\xff\xff", real_datagram()[:100]):
            src.datagram(junk, SENDER)
        self.assertEqual((meter.freshness(), src.refused), ("fresh", 3))

    def test_a_refused_value_is_no_sample(self):
        src, meter, _ = source()
        huge = Reading(phases=(PhaseReading.from_power(250_000.0),) * 3, measured_at=1.0)
        src.datagram(ours(reading_=huge), SENDER)
        self.assertIsNone(meter.latest)
        self.assertIn("L1 power", meter.stats.last_error or "")

    def test_a_silent_meter_goes_stale_and_comes_back(self):
        src, meter, clock = source()
        src.datagram(ours(), SENDER)
        self.assertEqual(meter.freshness(), "fresh")
        clock.advance(3.5)
        self.assertEqual(meter.freshness(), "stale")
        src.datagram(ours(tick=1000), SENDER)
        self.assertEqual(meter.freshness(), "fresh")
