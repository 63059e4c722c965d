"""DSMR / P1: CRC, framing, spec detection, mapping (pure), then the whole path:
bytes over a real TCP socket or a pseudo-terminal → DsmrSource → Meter → Shelly
EM.GetStatus over UDP. Expected numbers: shared/specs/sources-sinks.md §7,
checks 1-15, and tests/fixtures/dsmr/README.md."""

from __future__ import annotations

import json
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness, Meter
from meteremu.sources.dsmr.options import DsmrOptions
from meteremu.sources.dsmr.source import DsmrSource
from tests.support import HTTPClient, start_app, test_config
from tests.support.p1 import (
    DSMR_FIXTURES,
    P1Server,
    PtyMaster,
    dsmr_fixture,
    encrypt_telegram,
    has_timestamp,
    register_sources,
    retime,
)
from tests.support.shared.dsmr import AUTH, KEY
from tests.support.udp import Battery, free_udp_ports

# EM.GetStatus per fixture: (a, b, c act_power), (a, b, c voltage). Phases the
# meter does not have are served as 0.0.
EM_EXPECTED = {
    "v5_iskra_mt382.txt": ((70.0, 32.0, 142.0), (230.0, 230.0, 229.0)),
    "v4_2_kaifa.txt": ((170.0, 1247.0, 209.0), (230.0, 230.0, 230.0)),
    "v5_iskra_am550_two_mbus.txt": ((56.0, 0.0, 55.0), (229.9, 229.2, 222.9)),
    "be_fluvius_v171.txt": ((0.0, 0.0, 0.0), (234.7, 234.7, 234.7)),
    "be_fluvius_v171_alt.txt": ((47.0, 179.0, 111.0), (232.9, 228.1, 228.1)),
    "at_sagemcom_t210_d_r.txt": ((286.0, 0.0, 0.0), (230.0, 0.0, 0.0)),
    "hu_eon_sagemcom.txt": ((-2601.0, 0.0, 0.0), (240.4, 239.1, 241.2)),
    "ie_iskra_mie5t.txt": ((-10.0, -10.0, -10.0), (242.5, 241.7, 243.3)),
    "v5_warmtelink_unpadded_crc.txt": ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    "q3d_easymeter_esy5q3db1024.txt": ((747.85, 737.28, 639.73), (230.0, 230.0, 230.0)),
    "q3d_easymeter_esy5q3da1004.txt": ((557.29, 521.62, 609.3), (230.0, 230.0, 230.0)),
    "v2_2_iskra_mt382.txt": ((1010.0, 0.0, 0.0), (230.0, 0.0, 0.0)),
    "v3_iskra_mt382.txt": ((1190.0, 0.0, 0.0), (230.0, 0.0, 0.0)),
}


EM_REQUEST = b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}'


class TcpEndToEndTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def start(self, **source):
        register_sources(self)
        self.server = P1Server(self)
        self.udp_port = free_udp_ports(1)[0]
        options = {"type": "dsmr", "tcp": self.server.address, "reconnect_min": "20ms",
                   "reconnect_max": "100ms", **source}
        config = test_config(self.mktemp(), meters={"grid": {"source": options}},
                             devices=[{"type": "shelly_pro_3em", "udp_ports": [self.udp_port]}])
        self.app = yield start_app(self, config)
        self.meter = self.app.meters["grid"]
        self.source = self.app.sources["grid"]
        yield self.server.connected()
        proto = Battery()
        listening = reactor.listenUDP(0, proto, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.battery = proto

    @inlineCallbacks
    def em_status(self):
        raw = yield self.battery.ask(EM_REQUEST, self.udp_port)
        return json.loads(raw)["result"]

    @inlineCallbacks
    def send(self, data: bytes, event: str = "telegram"):
        d = self.source.when(event)
        self.server.send(data)
        result = yield d.addTimeout(10, reactor)
        return result

    @inlineCallbacks
    def test_every_fixture_reaches_em_getstatus(self):
        yield self.start()
        # Telegrams with a clock are rewritten to increasing times in the past;
        # those without one take the arrival time, so they go last.
        base = time.time() - 1000
        ordered = sorted(EM_EXPECTED, key=lambda n: not has_timestamp(dsmr_fixture(n)))
        self.assertEqual(sorted(ordered), DSMR_FIXTURES)
        for i, name in enumerate(ordered):
            telegram = retime(dsmr_fixture(name), base + i)
            result = yield self.send(telegram)
            self.assertEqual(self.meter.latest, result.reading, name)
            status = yield self.em_status()
            powers, volts = EM_EXPECTED[name]
            for phase, p, v in zip("abc", powers, volts, strict=True):
                self.assertEqual(status[f"{phase}_act_power"], round(p, 1), name)
                self.assertEqual(status[f"{phase}_voltage"], v, name)
                self.assertIsInstance(status[f"{phase}_current"], float, name)
            self.assertApproximates(status["total_act_power"], sum(powers), 0.001, msg=name)
            self.assertEqual(self.meter.freshness(), Freshness.FRESH, name)
        self.assertEqual(self.meter.details["telegrams"], len(EM_EXPECTED))
        self.assertEqual(self.meter.details["crc_errors"], 0)

    @inlineCallbacks
    def test_energy_gas_details_and_metrics(self):
        yield self.start()
        yield self.send(retime(dsmr_fixture("v5_iskra_mt382.txt"), time.time()))
        raw = yield self.battery.ask(b'{"id":2,"method":"EMData.GetStatus","params":{"id":0}}',
                                     self.udp_port)
        data = json.loads(raw)["result"]
        self.assertEqual((data["a_total_act_energy"], data["a_total_act_ret_energy"]), (6825.0, 2444.0))
        self.assertEqual((data["b_total_act_energy"], data["c_total_act_energy"]), (0.0, 0.0))
        self.assertEqual((data["total_act"], data["total_act_ret"]), (6825.0, 2444.0))
        details = self.meter.details
        self.assertEqual((details["spec"], details["connection"], details["phase_power"]),
                         ("5", "connected", "per phase"))
        self.assertEqual(details["equipment_id"], "4B384547303034303436333935353037")
        self.assertEqual(details["mbus"][0]["at"], "2017-01-02T15:10:05+00:00")
        self.assertEqual(self.meter.extra_labels["gas_m3"], {"channel": "1", "kind": "gas"})
        http = HTTPClient(self)
        _, body = yield http.get(f"http://127.0.0.1:{self.app.http_port()}/metrics")
        text = body.decode()
        self.assertIn('meteremu_meter_value{meter="grid",name="gas_m3"} 0.107', text)
        self.assertIn('meteremu_power_watts{meter="grid",phase="total"} 244.0', text)
        _, body = yield http.get(f"http://127.0.0.1:{self.app.http_port()}/healthz")
        self.assertIn("grid", body.decode())

    @inlineCallbacks
    def test_phaseless_heat_telegram_is_served_as_zero_and_exported(self):
        yield self.start()
        yield self.send(retime(dsmr_fixture("v5_warmtelink_unpadded_crc.txt"), time.time()))
        status = yield self.em_status()
        self.assertEqual([status[f"{p}_act_power"] for p in "abc"], [0.0, 0.0, 0.0])
        self.assertEqual(status["total_act_power"], 0.0)
        self.assertNotIn("errors", status)
        http = HTTPClient(self)
        response, body = yield http.get(f"http://127.0.0.1:{self.app.http_port()}/metrics")
        self.assertEqual(response.code, 200)
        self.assertIn('meteremu_meter_value{meter="grid",name="heat_energy_kwh"} 66905.55', body.decode())

    @inlineCallbacks
    def test_split_concatenated_garbage_and_bad_crc_over_the_socket(self):
        yield self.start()
        t0 = int(time.time()) - 100
        telegrams = [retime(dsmr_fixture("v5_iskra_mt382.txt"), t0 + i) for i in range(4)]
        # Split: 5-byte pieces, each its own write; the telegram completes with the last.
        d = self.source.when("telegram")
        for i in range(0, len(telegrams[0]), 5):
            self.server.send(telegrams[0][i:i + 5])
        result = yield d.addTimeout(10, reactor)
        self.assertEqual(result.reading.measured_at, t0)
        # Concatenated with garbage, and a bad CRC in the middle.
        bad = telegrams[2].replace(b"(0230.0*V)", b"(0231.0*V)", 1)
        rejected = self.source.when("rejected")
        last = self.source.when("telegram")
        self.server.send(b"\xff\x00garbage" + telegrams[1] + b"/half a tel" + bad + b"\r\n" + telegrams[3])
        rejection = yield rejected.addTimeout(10, reactor)
        self.assertEqual(rejection.reason, "crc")
        yield last.addTimeout(10, reactor)
        while self.meter.latest.measured_at < t0 + 3:  # the two good ones arrive in one chunk
            yield self.source.when("telegram").addTimeout(10, reactor)
        self.assertEqual(self.meter.latest.measured_at, t0 + 3)
        self.assertEqual((self.meter.details["telegrams"], self.meter.details["crc_errors"]), (3, 1))
        self.assertEqual(self.meter.stats.failures, 1)
        self.assertIn("CRC mismatch", self.meter.stats.last_error)
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)  # a bad CRC is a soft failure

    @inlineCallbacks
    def test_encrypted_telegrams_over_the_socket(self):
        yield self.start(version="SAGEMCOM_T210_D_R", encryption_key=KEY.hex(), authentication_key=AUTH.hex())
        plain = retime(dsmr_fixture("at_sagemcom_t210_d_r.txt"), time.time())
        yield self.send(encrypt_telegram(plain, KEY, AUTH))
        status = yield self.em_status()
        self.assertEqual((status["a_act_power"], status["b_act_power"]), (286.0, 0.0))
        self.assertNotIn(KEY.hex(), repr(self.source.options))

    @inlineCallbacks
    def test_disconnect_marks_down_and_reconnects(self):
        yield self.start()
        yield self.send(retime(dsmr_fixture("v5_iskra_mt382.txt"), time.time() - 10))
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        down = self.source.when("disconnected")
        again = self.server.next_connection()
        self.server.drop()
        yield down.addTimeout(10, reactor)
        self.assertEqual(self.meter.freshness(), Freshness.DOWN)
        self.assertIn("P1 connection lost", self.meter.down_reason)
        # No reply while down: the device's on_stale policy is "error".
        self.battery.transport.write(EM_REQUEST, ("127.0.0.1", self.udp_port))
        yield again.addTimeout(10, reactor)
        yield self.send(retime(dsmr_fixture("v5_iskra_mt382.txt"), time.time()))
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        status = yield self.em_status()
        self.assertEqual(status["a_act_power"], 70.0)
        self.assertEqual(self.server.connections, 2)
        self.assertEqual(self.meter.details["connections"], 2)

    @inlineCallbacks
    def test_refused_connection_is_down_and_backs_off(self):
        register_sources(self)
        server = P1Server(self)
        address = server.address
        yield server.close()
        meter = Meter("p1", reactor, stale_after=5)
        clock = Clock()
        source = DsmrSource(meter, DsmrOptions(tcp=address, reconnect_min=1.0), reactor, clock=clock,
                            rng=lambda: 1.0)
        source.startService()
        self.addCleanup(source.stopService)
        failed = source.when("disconnected")
        clock.advance(0)
        yield failed.addTimeout(10, reactor)
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertIn("connection refused", meter.down_reason)
        self.assertEqual(clock.getDelayedCalls()[0].getTime(), 1.0)  # backoff
        failed = source.when("disconnected")
        clock.advance(1.0)
        yield failed.addTimeout(10, reactor)
        self.assertEqual(clock.getDelayedCalls()[0].getTime(), 1.0 + 2.0)  # doubled


class WatchdogTests(TestCase):
    """The idle watchdog with a driven Clock and a real TCP stream."""

    timeout = 30

    @inlineCallbacks
    def test_idle_stream_is_dropped_and_reconnected(self):
        server = P1Server(self)
        meter = Meter("p1", reactor, stale_after=30)
        clock = Clock()
        options = DsmrOptions(tcp=server.address, interval=10.0, reconnect_min=1.0, reconnect_max=1.0)
        source = DsmrSource(meter, options, reactor, clock=clock, rng=lambda: 1.0)
        source.startService()
        self.addCleanup(source.stopService)
        clock.advance(0)
        yield server.connected()
        d = source.when("telegram")
        server.send(retime(dsmr_fixture("v5_iskra_mt382.txt"), time.time()))
        yield d.addTimeout(10, reactor)
        # A telegram re-arms the watchdog: 29 s later nothing has happened.
        clock.advance(29)
        self.assertEqual(source.state, "connected")
        # Garbage does not re-arm it.
        server.send(b"line noise\r\n")
        clock.advance(1.5)
        self.assertEqual(source.state, "connected")
        gone = server.disconnected()
        again = server.next_connection()
        clock.advance(29)  # 30 s after the last valid telegram
        yield gone.addTimeout(10, reactor)
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertIn("no valid P1 telegram", meter.down_reason)
        clock.advance(1.0)  # backoff
        yield again.addTimeout(10, reactor)
        self.assertEqual(server.connections, 2)

    @inlineCallbacks
    def test_stop_closes_the_connection(self):
        server = P1Server(self)
        meter = Meter("p1", reactor)
        source = DsmrSource(meter, DsmrOptions(tcp=server.address), reactor)
        source.startService()
        yield server.connected()
        gone = server.disconnected()
        yield source.stopService()
        yield gone.addTimeout(10, reactor)
        self.assertEqual(source.state, "stopped")


class SerialPtyTests(TestCase):
    """Serial through a real pseudo-terminal pair (pyserial + Twisted's SerialPort)."""

    timeout = 30

    def source(self, pty: PtyMaster, clock=None, **options) -> DsmrSource:
        meter = Meter("p1", reactor, stale_after=30)
        source = DsmrSource(meter, DsmrOptions(serial=pty.path, reconnect_min=1.0, reconnect_max=1.0,
                                               **options), reactor, clock=clock, rng=lambda: 1.0)
        return source

    @inlineCallbacks
    def test_telegrams_over_a_pty(self):
        pty = PtyMaster(self)
        source = self.source(pty, version="5")
        connected = source.when("connected")
        source.startService()
        self.addCleanup(source.stopService)
        yield connected.addTimeout(10, reactor)
        self.assertEqual(pty.baudrate(), 115200)
        self.assertEqual(source.proto.transport._serial.parity, "N")
        d = source.when("telegram")
        telegram = retime(dsmr_fixture("v5_iskra_mt382.txt"), time.time())
        pty.write(telegram[:100])
        pty.write(telegram[100:])
        result = yield d.addTimeout(10, reactor)
        self.assertEqual(result.reading.powers(), (70.0, 32.0, 142.0))
        self.assertEqual(source.meter.latest, result.reading)
        self.assertEqual(source.meter.details["line"], "115200 8N1")

    @inlineCallbacks
    def test_auto_tries_line_settings_until_telegrams_arrive(self):
        # A DSMR 2.2 meter talks 9600 baud; at another speed the port sees only noise.
        # A pty carries the baud rate the source sets, not parity or data bits, so
        # those are checked on the opened pyserial port. Linux ptys also refuse a
        # parity-only change at an unchanged speed (EINVAL): the source then opens
        # 8N1 and strips the parity bit, which reads 7E1 data exactly.
        clock = Clock()
        pty = PtyMaster(self)
        source = self.source(pty, clock=clock)
        source.startService()
        self.addCleanup(source.stopService)
        tried = []
        delay = 0.0
        for _ in range(4):
            expected = str(source.lines[source.line_index])
            clock.advance(delay)
            delay = 1.0  # the backoff from now on
            self.assertEqual(source.state, "connected", source.meter.down_reason)
            line = source.proto.line
            self.assertEqual(str(line), expected)
            tried.append((expected, "opened"))
            port = source.proto.transport._serial
            opened = (port.baudrate, port.bytesize, port.parity, port.stopbits)
            if source.proto.strip_parity:  # refused by the pty: 8N1 with bit 7 masked
                self.assertEqual(opened, (line.baudrate, 8, "N", 1))
            else:
                self.assertEqual(opened, (line.baudrate, line.bytesize, line.parity, line.stopbits))
            self.assertEqual(pty.baudrate(), line.baudrate)
            if pty.baudrate() == 9600:
                d = source.when("telegram")
                pty.write(dsmr_fixture("v2_2_iskra_mt382.txt"))
                result = yield d.addTimeout(10, reactor)
                self.assertEqual(result.reading.powers(), (1010.0,))
                break
            pty.write(bytes(range(0x80, 0x100)) * 4)
            gone = source.when("disconnected")
            clock.advance(30)  # the idle timeout passes without a valid telegram
            yield gone.addTimeout(10, reactor)
            self.assertIn("trying", source.meter.down_reason)
        self.assertEqual(tried, [("115200 8N1", "opened"), ("115200 7E1", "opened"), ("9600 7E1", "opened")])
        self.assertEqual(source.meter.details["line"], "9600 7E1")
        # Settings that worked are kept: a later reconnect opens them again.
        gone = source.when("disconnected")
        clock.advance(30)
        yield gone.addTimeout(10, reactor)
        clock.advance(1)
        self.assertEqual(source.state, "connected", source.meter.down_reason)
        self.assertEqual(str(source.proto.line), "9600 7E1")

    @inlineCallbacks
    def test_seven_bit_data_through_a_port_that_refuses_7e1(self):
        pty = PtyMaster(self)
        first = self.source(pty, version="5")  # leaves the pty at 115200 8N1
        connected = first.when("connected")
        first.startService()
        yield connected.addTimeout(10, reactor)
        yield first.stopService()
        source = self.source(pty, version="4")  # 115200 7E1: refused by the pty at that speed
        connected = source.when("connected")
        source.startService()
        self.addCleanup(source.stopService)
        yield connected.addTimeout(10, reactor)
        self.assertTrue(source.proto.strip_parity)
        self.assertEqual(source.proto.transport._serial.bytesize, 8)

        def even_parity(byte: int) -> int:
            return byte | (bin(byte).count("1") % 2) << 7

        telegram = retime(dsmr_fixture("v4_2_kaifa.txt"), time.time())
        on_the_wire = bytes(even_parity(b) for b in telegram)  # 7E1 as an 8N1 port reads it
        self.assertNotEqual(on_the_wire, telegram)
        d = source.when("telegram")
        pty.write(on_the_wire)
        result = yield d.addTimeout(10, reactor)
        self.assertEqual(result.reading.powers(), (170.0, 1247.0, 209.0))

    @inlineCallbacks
    def test_missing_device_is_down_and_retried(self):
        clock = Clock()
        meter = Meter("p1", reactor)
        source = DsmrSource(meter, DsmrOptions(serial="/dev/does-not-exist-p1", reconnect_min=2.0),
                            reactor, clock=clock, rng=lambda: 1.0)
        source.startService()
        self.addCleanup(source.stopService)
        clock.advance(0)
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertIn("cannot open /dev/does-not-exist-p1", meter.down_reason)
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [2.0])
        yield source.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
