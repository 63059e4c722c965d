"""UDP JSON-RPC as the batteries send it (spec §2.5, §6.2, checks 25-29)."""

from __future__ import annotations

import json
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import HTTPClient, sample_reading, start_app, test_config
from tests.support.udp import Battery, free_udp_ports

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h", "start_time": "12:00"}}}


class UDPTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def start(self, **device):
        self.ports = free_udp_ports(2)
        config = test_config(self.mktemp(), meters=SIM,
                             devices=[{"type": "shelly_pro_3em", "udp_ports": self.ports, **device}])
        self.app = yield start_app(self, config)
        self.device = self.app.devices[0]

    def battery(self, ip: str = "127.0.0.1") -> Battery:
        proto = Battery()
        port = reactor.listenUDP(0, proto, interface=ip)
        self.addCleanup(port.stopListening)
        return proto

    @inlineCallbacks
    def test_marstek_request_without_src_on_each_port(self):
        yield self.start()
        battery = self.battery()
        for port in self.ports:
            raw = yield battery.ask(b'{"id":7,"method":"EM.GetStatus","params":{"id":0}}', port)
            frame = json.loads(raw)
            self.assertEqual(frame["id"], 7)
            self.assertEqual(frame["src"], self.device.identity.device_id)
            self.assertNotIn("dst", frame)
            self.assertRegex(raw.decode(), r'"a_act_power":-?\d+\.\d[,}]')
            self.assertRegex(raw.decode(), r'"total_act_power":-?\d+\.\d{3}[,}]')
            self.assertLessEqual(len(raw), 1460)
            self.assertGreaterEqual(len(raw), 250)  # the Venus-on-LAN "long reply"

    @inlineCallbacks
    def test_request_with_src_gets_dst(self):
        yield self.start()
        raw = yield self.battery().ask(b'{"id":1,"src":"cli","method":"EM.GetStatus","params":{"id":0}}',
                                       self.ports[0])
        self.assertEqual(json.loads(raw)["dst"], "cli")

    @inlineCallbacks
    def test_other_methods_and_errors(self):
        yield self.start()
        battery = self.battery()
        raw = yield battery.ask(b'{"id":2,"method":"Shelly.GetDeviceInfo"}', self.ports[0])
        self.assertEqual(json.loads(raw)["result"]["mac"], self.device.identity.mac)
        raw = yield battery.ask(b'{"id":3,"method":"EM.GetStatus"}', self.ports[0])
        self.assertEqual(json.loads(raw)["error"]["code"], -103)
        raw = yield battery.ask(b'{"id":4,"method":"EMData.GetStatus","params":{"id":0}}', self.ports[1])
        self.assertIn("total_act", json.loads(raw)["result"])

    @inlineCallbacks
    def test_garbage_is_dropped_and_counted_and_service_goes_on(self):
        yield self.start(udp_max_bytes=256)
        battery = self.battery()
        garbage = [b"", b"\x00\xff" * 10, b"not json", b"[1,2,3]", b'{"method":"EM.GetStatus"}',
                   b'{"id":1}', b"{" * 200, b'{"id":1,"method":"EM.GetStatus","pad":"' + b"x" * 300 + b'"}']
        for data in garbage:
            battery.transport.write(data, ("127.0.0.1", self.ports[0]))
        # A valid request sent after the garbage is answered, and is the only answer.
        raw = yield battery.ask(b'{"id":99,"method":"EM.GetStatus","params":{"id":0}}', self.ports[0])
        self.assertEqual(json.loads(raw)["id"], 99)
        self.assertEqual(len(battery.received), 1)
        listener = self.app.device_services[0].udp[0].protocol
        self.assertEqual(listener.dropped.get("garbage"), 7)
        self.assertEqual(listener.dropped.get("oversize"), 1)
        http = HTTPClient(self)
        _, body = yield http.get(f"http://127.0.0.1:{self.app.http_port()}/metrics")
        self.assertRegex(body.decode(), r'meteremu_dropped_datagrams_total\{device="[^"]+",reason="garbage"\} 7.0')

    @inlineCallbacks
    def test_stale_meter_gets_no_reply(self):
        yield self.start()
        self.app.meters["grid"].report_failure("upstream down")
        battery = self.battery()
        battery.transport.write(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', ("127.0.0.1", self.ports[0]))
        # Other methods still answer; the stale poll before it did not.
        raw = yield battery.ask(b'{"id":2,"method":"Sys.GetStatus"}', self.ports[0])
        self.assertEqual(json.loads(raw)["id"], 2)
        self.assertEqual(len(battery.received), 1)
        self.assertEqual(self.app.device_services[0].udp[0].protocol.dropped.get("stale"), 1)

    @inlineCallbacks
    def test_two_batteries_divide(self):
        yield self.start(scaling={"mode": "divide"})
        meter = self.app.meters["grid"]
        meter.update(sample_reading(meter.latest.measured_at + 1, powers=(1000.0, 500.0, -300.0)))
        one, two = self.battery("127.0.0.2"), self.battery("127.0.0.3")
        request = b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}'
        for battery in (one, two, one, two):  # two polls each: both are batteries now
            yield battery.ask(request, self.ports[0])
        for battery in (one, two):
            result = json.loads((yield battery.ask(request, self.ports[0])))["result"]
            self.assertEqual(result["a_act_power"], 500.0)
            self.assertEqual(result["b_act_power"], 250.0)
            self.assertEqual(result["c_act_power"], -150.0)
            self.assertEqual(result["total_act_power"], 600.0)
            self.assertEqual(result["a_voltage"], 227.0)  # never scaled
            self.assertEqual(result["a_pf"], 0.99)
        # Home Assistant (no EM polls) still sees the real values over HTTP.
        http = HTTPClient(self)
        _, body = yield http.get(f"http://127.0.0.1:{self.app.http_port()}/rpc/Shelly.GetStatus")
        self.assertEqual(json.loads(body)["em:0"]["a_act_power"], 1000.0)
        _, body = yield http.get(f"http://127.0.0.1:{self.app.http_port()}/admin/overview")
        overview = json.loads(body)["devices"]["0"]
        self.assertEqual(overview["active_batteries"], ["127.0.0.2", "127.0.0.3"])
        udp_clients = [c for c in overview["clients"] if c["transport"] == "udp"]
        self.assertEqual([(c["ip"], c["requests"], c["battery"], c["last_method"]) for c in udp_clients],
                         [("127.0.0.2", 3, True, "EM.GetStatus"), ("127.0.0.3", 3, True, "EM.GetStatus")])
        _, body = yield http.get(f"http://127.0.0.1:{self.app.http_port()}/metrics")
        self.assertRegex(body.decode(), r'meteremu_device_active_batteries\{device="[^"]+"\} 2.0')

    @inlineCallbacks
    def test_minimal_payload(self):
        yield self.start(payload="minimal")
        raw = yield self.battery().ask(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', self.ports[0])
        self.assertEqual(set(json.loads(raw)["result"]),
                         {"a_act_power", "b_act_power", "c_act_power", "total_act_power"})

    @inlineCallbacks
    def test_em1_on_monophase(self):
        yield self.start(profile="monophase")
        meter = self.app.meters["grid"]
        meter.update(sample_reading(meter.latest.measured_at + 1, powers=(100.0, 200.0, 300.0)))
        raw = yield self.battery().ask(b'{"id":1,"method":"EM1.GetStatus","params":{"id":2}}', self.ports[1])
        self.assertEqual(json.loads(raw)["result"]["act_power"], 300.0)


class BroadcastTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_broadcast_to_the_loopback_subnet_is_answered(self):
        # Check 26. On loopback, 127.255.255.255 is the subnet broadcast of
        # 127.0.0.0/8; the datagram never leaves this machine.
        port = free_udp_ports(1)[0]
        config = test_config(self.mktemp(), meters=SIM,
                             server={"host": "0.0.0.0", "http_port": 0},
                             devices=[{"type": "shelly_pro_3em", "udp_ports": [port]}])
        yield start_app(self, config)
        proto = Battery()
        listening = reactor.listenUDP(0, proto, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        listening.socket.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        d: Deferred[bytes] = Deferred()
        proto.waiting.append(d)
        try:
            proto.transport.write(b'{"id":5,"method":"EM.GetStatus","params":{"id":0}}', ("127.255.255.255", port))
        except OSError as exc:
            raise self.skipTest(f"no broadcast on loopback here: {exc}") from None
        d.addTimeout(5, reactor)
        raw = yield d
        self.assertEqual(json.loads(raw)["id"], 5)
