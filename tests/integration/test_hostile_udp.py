"""Forged UDP sources against a real meteremu on loopback (issue #22 items 10 and 11).

Linux answers every address of 127.0.0.0/8 on the loopback interface, so a
test can send from 127.0.0.2, 127.0.0.3, … as an attacker on the LAN sends
from addresses that are not its own.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from tests.support import sample_reading, start_app, test_config
from tests.support.udp import free_udp_ports

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h", "start_time": "12:00", "seed": 3}}}
WAIT = 3.0


class Source(DatagramProtocol):
    """One forged (or real) source address; ``ask`` fires with the answer or None."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[Any]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.waiting:
            self.waiting.pop(0).callback(json.loads(data))

    def ask(self, method: str, port: int, timeout: float = WAIT) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append(d)
        self.transport.write(json.dumps({"id": 1, "method": method, "params": {"id": 0}}).encode(),
                             ("127.0.0.1", port))
        timer = reactor.callLater(timeout, lambda: d.called or (self.waiting.remove(d), d.callback(None)))
        return d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])


class ForgedSourceTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def start(self, **scaling: Any) -> Any:
        self.port = free_udp_ports(1)[0]
        config = test_config(self.mktemp(), meters=SIM, devices=[
            {"type": "shelly_pro_3em", "udp_ports": [self.port], "scaling": scaling or {"mode": "none"}}])
        self.app = yield start_app(self, config)
        meter = self.app.meters["grid"]
        meter.update(sample_reading(meter.latest.measured_at + 1, (1600.0, 0.0, 0.0)))

    def source(self, address: str) -> Source:
        protocol = Source()
        port = reactor.listenUDP(0, protocol, interface=address)
        self.addCleanup(port.stopListening)
        return protocol

    @inlineCallbacks
    def test_large_answers_are_rationed_per_source_small_ones_never(self) -> Any:
        """A 36-byte Shelly.GetStatus buys a 1.4 kB answer: a burst of 3, then one a second."""
        yield self.start()
        attacker = self.source("127.0.0.2")
        answers = yield DeferredList([attacker.ask("Shelly.GetStatus", self.port, 1.0) for _ in range(20)])
        answered = [r for ok, r in answers if r is not None]
        self.assertEqual(len(answered), 3)
        self.assertGreater(len(json.dumps(answered[0])), 1024)
        self.assertEqual(self.app.device_services[0].udp[0].protocol.dropped.get("rate_limited"), 17)
        polls = yield DeferredList([attacker.ask("EM.GetStatus", self.port) for _ in range(20)])
        self.assertTrue(all(r is not None for ok, r in polls), "a small answer was rationed")
        other = yield self.source("127.0.0.3").ask("Shelly.GetStatus", self.port)
        self.assertIsNotNone(other)  # another source has its own budget

    @inlineCallbacks
    def test_forged_pollers_cannot_take_the_real_batterys_share(self) -> Any:
        """2,000 forged datagrams under divide: the real battery got 2 W instead of 1,600 W."""
        yield self.start(mode="divide")
        battery = self.source("127.0.0.1")
        for _ in range(2):
            first = yield battery.ask("EM.GetStatus", self.port)
        self.assertEqual(first["result"]["total_act_power"], 1600.0)
        forged = [self.source(f"127.0.{i // 200}.{2 + i % 200}") for i in range(100)]
        for _ in range(2):
            yield DeferredList([s.ask("EM.GetStatus", self.port) for s in forged])
        answer = yield battery.ask("EM.GetStatus", self.port)
        self.assertEqual(answer["result"]["total_act_power"], 1600.0 / 8)  # at most 8 shares, not 101
        device = self.app.devices[0]
        self.assertEqual(len(device.clients.active_batteries()), 8)
        self.assertIn("127.0.0.1", device.clients.active_batteries())
