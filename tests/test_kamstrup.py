"""Kamstrup KMP: the codec against the KMP document's worked examples
(shared/specs/sources-sinks.md §3, checks 16-19), then a fake MULTICAL on a
real pseudo-terminal → KamstrupSource → a phaseless Meter → Shelly and /metrics."""

from __future__ import annotations

import json
from decimal import Decimal

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meteremu.config import ConfigError, parse_config
from meteremu.meter import Freshness, Meter
from meteremu.reading import Reading
from meteremu.sources.kamstrup import kmp
from meteremu.sources.kamstrup.options import KamstrupOptions
from meteremu.sources.kamstrup.parse import DEFAULT_REGISTERS, register_extras, resolve_register
from meteremu.sources.kamstrup.source import KamstrupSource
from tests.support import HTTPClient, start_app, test_config
from tests.support.kmp_meter import FakeMultical
from tests.support.p1 import PtyMaster, register_sources
from tests.support.udp import Battery, free_udp_ports


def h(text: str) -> bytes:
    return bytes.fromhex(text)


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


METER_REGISTERS = {
    0x003C: (0x08, "240.860"),  # GJ
    0x0044: (0x28, "1234.56"),  # m³: mantissa 0x01E240 holds a 40, stuffed
    0x004A: (0x29, "1549"),  # l/h: 0x060D, both stuffed
    0x0050: (0x16, "12.3"),  # kW
    0x0056: (0x25, "55.12"),
    0x0057: (0x25, "32.4"),
    0x0059: (0x26, "22.72"),
    0x03EC: (0x2E, "45678"),
    0x0080: (0x16, "19.5"),  # id 0x0080: stuffed in the request
}


class SourceTests(TestCase):
    timeout = 30

    def start(self, clock: Clock, **options) -> tuple[KamstrupSource, FakeMultical, PtyMaster]:
        pty = PtyMaster(self)
        fake = FakeMultical(pty, METER_REGISTERS)
        meter = Meter("heat", reactor, stale_after=3 * 3600)
        source = KamstrupSource(meter, KamstrupOptions(serial=pty.path, timeout=2.0, **options),
                                reactor, clock=clock, rng=lambda: 1.0)
        source.startService()
        self.addCleanup(source.stopService)
        return source, fake, pty

    @inlineCallbacks
    def wait_poll(self, source: KamstrupSource, clock: Clock, advance: float):
        """Let the next read start (Clock) and wait for it (answers come through the reactor)."""
        d = source.when_polled()
        clock.advance(advance)
        ok = yield d.addTimeout(10, reactor)
        return ok

    @inlineCallbacks
    def test_poll_over_a_pty(self):
        clock = Clock()
        source, fake, pty = self.start(clock, registers=(*DEFAULT_REGISTERS, "0x0080"))
        yield self.wait_poll(source, clock, 0)
        meter = source.meter
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        r = meter.latest
        self.assertEqual(r.phases, ())
        self.assertIsNone(r.energy)
        x = dict(r.extras)
        self.assertAlmostEqual(x.pop("heat_energy_kwh"), 66905.556, places=3)
        self.assertEqual(x, {"volume_m3": 1234.56, "flow_lph": 1549.0, "heat_power_w": 12300.0,
                             "temp_inlet_c": 55.12, "temp_outlet_c": 32.4, "temp_diff_k": 22.72,
                             "operating_hours": 45678.0, "register_0080_kw": 19.5})
        # 9 registers: two GetRegister requests (8 + 1), then GetSerial once.
        self.assertEqual([(q.cid, q.data[0] if q.data else None) for q in fake.requests],
                         [(0x10, 8), (0x10, 1), (0x02, None)])
        self.assertIn(h("1B7F"), fake.raw_requests[1])  # register 0x0080 went out stuffed
        self.assertEqual(meter.details["serial"], "12345678")
        self.assertEqual(meter.details["units"]["heat_energy_kwh"], "GJ")
        self.assertEqual(fake.pty.baudrate(), 1200)
        self.assertEqual(source.proto.transport._serial.stopbits, 2)
        # The next read comes after the interval; the serial number is not asked again.
        yield self.wait_poll(source, clock, 3600)
        self.assertEqual(len(fake.requests), 5)
        self.assertEqual(source.polls, 2)

    @inlineCallbacks
    def test_bad_crc_is_retried(self):
        clock = Clock()
        source, fake, pty = self.start(clock)
        fake.corrupt = 1
        yield self.wait_poll(source, clock, 0)
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)
        self.assertEqual([q.cid for q in fake.requests], [0x10, 0x10, 0x02])

    @inlineCallbacks
    def test_silent_meter_is_down_and_retried_sooner(self):
        clock = Clock()
        source, fake, pty = self.start(clock, retries=1, retry_min=60)
        fake.silent = 2  # both attempts of the first poll
        polled = source.when_polled()
        asked = fake.next_request()
        clock.advance(0)  # the first read starts
        for _ in range(2):
            yield asked.addTimeout(10, reactor)
            asked = fake.next_request()
            clock.advance(2.0)  # the answer timeout
        ok = yield polled.addTimeout(10, reactor)
        self.assertFalse(ok)
        self.assertEqual(source.meter.freshness(), Freshness.DOWN)
        self.assertIn("no answer", source.meter.down_reason)
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [4.0 + 60.0])
        yield self.wait_poll(source, clock, 60)
        self.assertEqual(source.meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_missing_port(self):
        clock = Clock()
        meter = Meter("heat", reactor)
        source = KamstrupSource(meter, KamstrupOptions(serial="/dev/does-not-exist-kmp"), reactor,
                                clock=clock, rng=lambda: 1.0)
        source.startService()
        clock.advance(0)
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertIn("does-not-exist-kmp", meter.down_reason)
        yield source.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


class PhaselessEndToEndTests(TestCase):
    """A heat meter has no phases: the Shelly answers 0.0, /metrics lists its extras."""

    timeout = 30

    @inlineCallbacks
    def test_shelly_and_metrics_serve_a_heat_meter(self):
        register_sources(self)
        pty = PtyMaster(self)
        FakeMultical(pty, METER_REGISTERS)
        udp_port = free_udp_ports(1)[0]
        config = test_config(self.mktemp(),
                             meters={"heat": {"source": {"type": "kamstrup", "serial": pty.path}}},
                             devices=[{"type": "shelly_pro_3em", "udp_ports": [udp_port]}])
        app = yield start_app(self, config)
        meter = app.meters["heat"]
        self.assertEqual(meter.stale_after, 3 * 3600.0)
        if meter.latest is None:
            ok = yield app.sources["heat"].when_polled().addTimeout(10, reactor)
            self.assertTrue(ok)
        battery = Battery()
        listening = reactor.listenUDP(0, battery, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        raw = yield battery.ask(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', udp_port)
        status = json.loads(raw)["result"]
        for phase in "abc":
            for field in ("act_power", "aprt_power", "current", "voltage", "pf", "freq"):
                self.assertEqual(status[f"{phase}_{field}"], 0.0, f"{phase}_{field}")
        self.assertEqual((status["total_act_power"], status["total_current"]), (0.0, 0.0))
        raw = yield battery.ask(b'{"id":2,"method":"EMData.GetStatus","params":{"id":0}}', udp_port)
        self.assertEqual(json.loads(raw)["result"]["total_act"], 0.0)
        http = HTTPClient(self)
        for path in ("/rpc/Shelly.GetStatus", "/rpc/EM1.GetStatus?id=0", "/healthz"):
            response, _ = yield http.get(f"http://127.0.0.1:{app.http_port()}{path}")
            self.assertIn(response.code, (200, 404), path)
        response, body = yield http.get(f"http://127.0.0.1:{app.http_port()}/metrics")
        self.assertEqual(response.code, 200)
        text = body.decode()
        self.assertIn('meteremu_meter_value{meter="heat",name="temp_inlet_c"} 55.12', text)
        self.assertIn('meteremu_power_watts{meter="heat",phase="total"} 0.0', text)
        self.assertNotIn('meteremu_power_watts{meter="heat",phase="a"}', text)

    def test_reading_without_phases(self):
        reading = Reading(phases=(), measured_at=1.0, extras={"heat_energy_kwh": 1.0})
        self.assertEqual((reading.total_act_power, reading.powers(), reading.phase(2).voltage),
                         (0.0, (), 0.0))
