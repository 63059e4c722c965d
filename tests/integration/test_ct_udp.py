"""The Marstek CT002/CT003 devices over real UDP on loopback, in a whole meteremu.

The batteries are sockets speaking frames built by our codec (no CT002
decoder exists as a library: aiomarstek and py-marstek speak Marstek's
JSON Open API on another port, not the CT protocol).
"""

from __future__ import annotations

import random

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from meteremu.devices.marstek import ct_codec as codec
from tests.support import sample_reading, start_app, test_config
from tests.support.udp import Battery

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h", "start_time": "12:00"}}}


def request(mac: str, phase: str, power: int, kind: str = "VNSE3-0", ct: str = "HME-4") -> bytes:
    return codec.encode_request(codec.CtRequest(kind, mac, ct, "", phase, power))


def pause(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class CtUdpTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def start(self) -> object:
        devices = [{"type": "marstek_ct002", "udp_port": 0, "mac": "02CA7E000001"},
                   {"type": "marstek_ct003", "udp_port": 0, "mode": "relay", "name": "relay"}]
        self.app = yield start_app(self, test_config(self.mktemp(), meters=SIM, devices=devices))
        self.ports = [service.udp.port for service in self.app.device_services]
        self.meter = self.app.meters["grid"]
        yield pause(0.05)  # the simulator's first reading comes and goes; the test publishes its own
        return self.app

    def battery(self) -> Battery:
        proto = Battery()
        port = reactor.listenUDP(0, proto, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return proto

    def publish(self, a: float, b: float = 0.0, c: float = 0.0) -> None:
        latest = self.meter.latest
        at = latest.measured_at + 1 if latest is not None else 1_700_000_000.0
        self.assertTrue(self.meter.update(sample_reading(at, powers=(a, b, c))))

    @inlineCallbacks
    def test_two_batteries_get_their_own_values(self) -> object:
        yield self.start()
        first, second = self.battery(), self.battery()
        self.publish(0.0)
        for proto, mac, phase in ((first, "AABBCCDDEE01", "A"), (second, "AABBCCDDEE02", "B")):
            raw = yield proto.ask(request(mac, phase, 0), self.ports[0])
            kind, answer = codec.parse_response(raw)
            self.assertEqual((kind, answer.ct_type, answer.ct_mac, answer.battery_mac),
                             ("ct002", "HME-4", "02CA7E000001", mac))
        self.publish(800.0, 0.0, 0.0)
        values = []
        for proto, mac, phase in ((first, "AABBCCDDEE01", "A"), (second, "AABBCCDDEE02", "B")):
            raw = yield proto.ask(request(mac, phase, 0), self.ports[0])
            _, answer = codec.parse_response(raw)
            values.append((answer.phase_power, answer.chrg_nb, answer.info_idx))
        self.assertEqual(values, [((810, 0, 0), (2, 2, 2, 2), 1), ((0, 810, 0), (2, 2, 2, 2), 1)])
        overview = self.app.overview()["devices"]["0"]
        self.assertEqual(overview["model"], "HME-4")
        self.assertEqual(overview["active_batteries"], ["AABBCCDDEE01", "AABBCCDDEE02"])
        self.assertEqual(overview["control"]["quality"], "off_target")

    @inlineCallbacks
    def test_garbage_is_dropped_and_counted_and_the_next_request_answered(self) -> object:
        yield self.start()
        self.publish(100.0)
        proto = self.battery()
        for data in (b"", b"\x01\x02\x03", b"x" * 2000, request("AABBCCDDEE01", "A", 0)[:-1] + b"0",
                     b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}'):
            proto.transport.write(data, ("127.0.0.1", self.ports[0]))
        raw = yield proto.ask(request("AABBCCDDEE01", "A", 0), self.ports[0])
        self.assertEqual(codec.parse_response(raw)[1].battery_mac, "AABBCCDDEE01")
        yield pause(0.1)
        self.assertEqual(len(proto.received), 1)
        device = self.app.devices[0]
        self.assertEqual(device.dropped["garbage"], 5)
        self.assertEqual(self.app.metrics.dropped.value(device.identity.device_id, "garbage"), 5)

    @inlineCallbacks
    def test_a_flood_of_mutated_frames_gets_no_answer_and_the_next_request_does(self) -> object:
        """300 frames with random bytes changed (deterministic): never answered, never a crash."""
        yield self.start()
        self.publish(100.0)
        proto = self.battery()
        rng = random.Random(16)
        good = request("AABBCCDDEE05", "A", 0)
        for _ in range(300):
            data = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if bytes(data) != good:
                proto.transport.write(bytes(data), ("127.0.0.1", self.ports[0]))
        yield pause(0.3)  # the kernel drops what overflows the socket buffer; let it drain first
        raw = yield proto.ask(good, self.ports[0])
        self.assertEqual(codec.parse_response(raw)[1].battery_mac, "AABBCCDDEE05")
        yield pause(0.1)
        device = self.app.devices[0]
        self.assertEqual(len(proto.received), 1)  # only the well-formed request was answered
        self.assertGreater(device.dropped["garbage"], 0)
        self.assertNotIn("error", device.dropped)

    @inlineCallbacks
    def test_ct003_relay_sends_the_real_values(self) -> object:
        yield self.start()
        self.publish(300.0, -120.0, 40.0)
        raw = yield self.battery().ask(request("AABBCCDDEE03", "C", 150, kind="HMG-50", ct="HME-3"), self.ports[1])
        kind, answer = codec.parse_response(raw)
        self.assertEqual((kind, answer.phase_power, answer.total_power), ("ct003", (300, -120, 40), 220))
        self.assertEqual((answer.chrg_nb, answer.dchrg_power), ((0, 0, 1, 0), (0, 0, 0, 150, 0)))
        self.assertEqual(len(codec.decode_frame(raw)), 28)
