"""UDP JSON-RPC as the batteries send it (spec §2.5, §6.2, checks 25-29)."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.devices.shelly.options import Options, ScalingOptions
from meteremu.devices.shelly.rpc import CallContext
from meteremu.devices.shelly.udp import answer_datagram
from tests.support import make_device, sample_reading


class AnswerDatagramTests(SynchronousTestCase):
    """The pure decision, with scaling weights and throttling."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        scaling = ScalingOptions(mode="weights", weights={"10.0.0.1": 0.3}, min_interval=0.5)
        self.device = make_device(self.clock, Options(meter="grid", scaling=scaling))
        self.device.meter.update(sample_reading(self.clock.seconds(), powers=(1000.0, 0.0, 0.0)))

    def ask(self, ip: str) -> tuple[bytes | None, str | None]:
        return answer_datagram(self.device.core, b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}',
                               CallContext("udp", ip), 2048)

    def test_weights_and_min_interval(self):
        reply, _ = self.ask("10.0.0.1")
        self.assertEqual(json.loads(reply)["result"]["a_act_power"], 1000.0)  # not yet a battery
        self.clock.advance(0.2)
        self.assertEqual(self.ask("10.0.0.1"), (None, "throttled"))  # dropped, not queued
        self.clock.advance(0.4)
        reply, _ = self.ask("10.0.0.1")
        self.assertEqual(json.loads(reply)["result"]["a_act_power"], 300.0)  # battery now: weight 0.3
        self.clock.advance(1)
        reply, _ = self.ask("10.0.0.2")
        self.clock.advance(1)
        reply, _ = self.ask("10.0.0.2")
        self.assertEqual(json.loads(reply)["result"]["a_act_power"], 1000.0)  # default weight 1.0
