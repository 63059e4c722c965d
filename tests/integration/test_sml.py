"""SML reading head: real meters' frames written into a pseudo-terminal (the serial port, real
termios) and streamed by a ser2net stand-in over TCP, in chunks and with noise, damaged frames,
silence and a vanishing bridge."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness, Meter
from meteremu.sources.sml.options import SmlOptions
from meteremu.sources.sml.source import SmlSource
from tests.support.faults import wait_until
from tests.support.p1 import P1Server, PtyMaster
from tests.support.sml import sml_frame

EBZ = sml_frame("ebz_per_phase_power.hex")
EBZ_2 = sml_frame("ebz_per_phase_power_2.hex")


class SmlSerialTests(TestCase):
    timeout = 30

    def source(self, **options: Any) -> SmlSource:
        opts = SmlOptions(reconnect_min=0.05, reconnect_max=0.2, **options)
        source = SmlSource(Meter("grid", reactor, stale_after=10), opts, reactor, rng=lambda: 1.0)
        source.startService()
        self.addCleanup(source.stopService)
        return source

    @inlineCallbacks
    def test_frames_through_a_pty(self) -> Any:
        pty = PtyMaster(self)
        source = self.source(serial=pty.path)
        yield wait_until(lambda: source.state == "connected", 10, "the port opened")
        self.assertEqual(pty.baudrate(), 9600)
        frame = source.when("frame")
        for i in range(0, len(EBZ), 17):  # as an optical head delivers them: in pieces
            pty.write(EBZ[i:i + 17])
        reading = yield frame.addTimeout(10, reactor)
        self.assertEqual(reading.powers(), (82.26, 27.06, 243.57))
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)
        rejected = source.when("rejected")
        pty.write(b"\x00\xffnoise" + sml_frame("noise_issue15.hex"))
        result = yield rejected.addTimeout(10, reactor)
        self.assertEqual(result.reason, "noise")
        rejected = source.when("rejected")
        pty.write(sml_frame("dzg_1_8_0_only.hex"))
        result = yield rejected.addTimeout(10, reactor)
        self.assertIn("PIN", result.detail)
        frame = source.when("frame")
        pty.write(EBZ_2)
        reading = yield frame.addTimeout(10, reactor)
        self.assertEqual(reading.powers(), (68.54, 25.8, 1061.73))
        self.assertEqual(source.meter.details["noise"], 1)
        self.assertEqual(source.meter.details["refused"], 1)

    @inlineCallbacks
    def test_missing_port_is_down_with_the_reason(self) -> Any:
        source = self.source(serial="/dev/meteremu-no-such-port")
        yield wait_until(lambda: source.meter.freshness() == Freshness.DOWN, 10, "down")
        self.assertIn("/dev/meteremu-no-such-port", source._said.get("connection", ""))


class SmlTcpTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_bridge_stream_silence_and_vanish(self) -> Any:
        server = P1Server(self)
        opts = SmlOptions(tcp=server.address, interval=0.1, idle_timeout=0.5, reconnect_min=0.05,
                          reconnect_max=0.2)
        source = SmlSource(Meter("grid", reactor, stale_after=10), opts, reactor, rng=lambda: 1.0)
        source.startService()
        self.addCleanup(source.stopService)
        yield server.connected().addTimeout(10, reactor)
        frame = source.when("frame")
        server.send(b"\x1b\x1b\x1b" + EBZ + EBZ_2[:40])  # a partial escape before, half a frame after
        reading = yield frame.addTimeout(10, reactor)
        self.assertEqual(reading.powers()[0], 82.26)
        frame = source.when("frame")
        server.send(EBZ_2[40:])
        reading = yield frame.addTimeout(10, reactor)
        self.assertEqual(reading.powers()[0], 68.54)
        # A damaged frame (CRC) is refused; the next good one is taken.
        damaged = bytearray(EBZ)
        damaged[200] ^= 0x55
        rejected = source.when("rejected")
        server.send(bytes(damaged))
        result = yield rejected.addTimeout(10, reactor)
        self.assertIn("damaged", result.detail)
        # Silence: the idle watchdog drops the connection, the meter is down, a new one comes.
        again = server.next_connection()
        yield wait_until(lambda: source.meter.freshness() == Freshness.DOWN, 10, "down on silence")
        yield again.addTimeout(10, reactor)
        frame = source.when("frame")
        server.send(EBZ)
        yield frame.addTimeout(10, reactor)
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)
        # The bridge vanishes: down, then back.
        yield server.close()
        yield wait_until(lambda: source.meter.freshness() == Freshness.DOWN, 10, "down after the vanish")
        yield wait_until(lambda: "cannot open tcp" in source._said.get("connection", ""), 10, "refused retries")
