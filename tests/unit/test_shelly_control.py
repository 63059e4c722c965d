"""``control:`` on the Shelly device: each polling battery gets its own value (served-value path)."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.control import ControlOptions
from meteremu.devices.shelly.options import FallbackPolicy, Options
from meteremu.devices.shelly.rpc import CallContext
from meteremu.devices.shelly.udp import answer_datagram
from tests.support import make_device, sample_reading

POLL = b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}'


class ShellyControlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)

    def device(self, **options: object):  # type: ignore[no-untyped-def]
        control = ControlOptions(weights={"10.0.0.1": 1.0, "10.0.0.2": 3.0})
        return make_device(self.clock, Options(meter="grid", control=control, **options))  # type: ignore[arg-type]

    def total(self, device, ip: str) -> float | None:  # type: ignore[no-untyped-def]
        reply, _ = answer_datagram(device.core, POLL, CallContext("udp", ip), 2048)
        return None if reply is None else json.loads(reply)["result"]["total_act_power"]

    def test_each_battery_its_weighted_share(self) -> None:
        device = self.device()
        device.meter.update(sample_reading(self.clock.seconds(), powers=(600.0, 200.0, 0.0)))
        for ip in ("10.0.0.1", "10.0.0.2") * 2:  # two polls make a battery
            self.total(device, ip)
        self.assertApproximates(self.total(device, "10.0.0.1"), 200.0, 0.01)
        self.assertApproximates(self.total(device, "10.0.0.2"), 600.0, 0.01)
        self.assertApproximates(self.total(device, "10.0.0.9"), 800.0, 0.01)  # not a battery yet: real
        device.meter.update(sample_reading(self.clock.seconds() + 1, powers=(10.0, 0.0, 0.0)))
        self.assertEqual(self.total(device, "10.0.0.2"), 0.0)  # inside the deadband: nothing to do

    def test_stale_hold_is_a_zero_adjustment_and_fallback_is_served_as_is(self) -> None:
        for policy, expected in (("hold", 0.0), (FallbackPolicy(150.0), 150.0)):
            device = self.device(on_stale=policy)
            device.meter.update(sample_reading(self.clock.seconds(), powers=(600.0, 0.0, 0.0)))
            for ip in ("10.0.0.1", "10.0.0.2") * 2:
                self.total(device, ip)
            self.clock.advance(11.0)
            self.assertApproximates(self.total(device, "10.0.0.1"), expected, 0.01)

    def test_a_battery_alone_is_served_the_reading(self) -> None:
        device = self.device()
        device.meter.update(sample_reading(self.clock.seconds(), powers=(600.0, 200.0, 0.0)))
        for _ in range(3):
            total = self.total(device, "10.0.0.1")
        self.assertApproximates(total, 800.0, 0.01)

    def test_control_and_scaling_are_exclusive(self) -> None:
        from meteremu.devices.shelly.options import ScalingOptions

        options = Options(control=ControlOptions(), scaling=ScalingOptions(mode="divide"))
        self.assertEqual([key for key, _ in options.validate()], ["control"])
