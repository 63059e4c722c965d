"""Kamstrup KMP: the codec against the KMP document's worked examples
(shared/specs/sources-sinks.md §3, checks 16-19), then a fake MULTICAL on a
real pseudo-terminal → KamstrupSource → a phaseless Meter → Shelly and /metrics."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness, Meter
from meteremu.reading import Reading
from meteremu.sources.kamstrup.options import KamstrupOptions
from meteremu.sources.kamstrup.parse import DEFAULT_REGISTERS
from meteremu.sources.kamstrup.source import KamstrupSource
from tests.support import HTTPClient, start_app, test_config
from tests.support.kmp_meter import FakeMultical
from tests.support.p1 import PtyMaster, register_sources
from tests.support.shared.kamstrup import h
from tests.support.udp import Battery, free_udp_ports

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
