"""What is shown of active control: /metrics families and the MQTT values (low churn)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu import control
from meteremu.devices.marstek import ct_codec as codec
from meteremu.devices.marstek.ct import CtDevice, CtIdentity
from meteremu.devices.marstek.options import Ct002Options
from meteremu.exporters.mqtt.topics import Layout, control_values, format_value, meter_values
from meteremu.exporters.prometheus import Metrics
from meteremu.meter import Meter
from tests.support import sample_reading


class ViewTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.meter = Meter("grid", self.clock, stale_after=10.0, source_type="test")
        options = Ct002Options()
        controller = control.shared(self.meter, self.clock, options.control)
        self.device = CtDevice(options, CtIdentity("02CA7E000001", "ct002-02ca7e000001", "HME-4"), self.meter,
                               self.clock, controller)
        for i in (1, 2):
            self.ask(i, 3)
        self.meter.update(sample_reading(self.clock.seconds(), powers=(600.0, 0.0, 0.0)))
        for i in (1, 2):
            self.ask(i, 3)

    def ask(self, i: int, power: int) -> None:
        request = codec.CtRequest("VNSE3-0", f"AABBCCDDEE0{i}", "HME-4", "", "D", power)
        self.device.answer(codec.encode_request(request), "127.0.0.1", 22222)

    def test_metrics_per_battery_and_quality(self) -> None:
        metrics = Metrics(lambda: [self.meter])
        metrics.add_devices(lambda: [self.device])
        text = metrics.render().decode()
        self.assertIn('meteremu_battery_power_watts{battery="AABBCCDDEE01",device="ct002-02ca7e000001"} 3.0', text)
        self.assertIn('meteremu_battery_target_watts{battery="AABBCCDDEE02",device="ct002-02ca7e000001"} 303.0',
                      text)
        self.assertIn('meteremu_control_quality{device="ct002-02ca7e000001",quality="off_target"} 1.0', text)
        self.assertIn('meteremu_battery_state{battery="AABBCCDDEE01",device="ct002-02ca7e000001",state="moving"} 1.0',
                      text)

    def test_mqtt_values_are_rounded_and_have_enum_configs(self) -> None:
        values = {p.key: (p, v) for p, v in control_values(self.meter)}
        self.assertEqual(values["control_quality"][1], "off_target")
        self.assertEqual(values["battery_aabbccddee01_power"][1], 0.0)  # 3 W: to the nearest 10 W
        self.assertEqual(values["battery_aabbccddee01_target"][1], 300.0)
        self.assertEqual(values["battery_aabbccddee01_share"][1], 50.0)
        self.assertEqual(values["battery_aabbccddee01_state"][1], "ok")  # moving/steady: one state, no churn
        self.assertEqual(format_value("ok", None), "ok")
        config = Layout().config(self.meter, values["control_quality"][0])
        self.assertEqual((config["device_class"], config["options"]),
                         ("enum", ["stable", "off_target", "limited", "idle"]))
        self.assertNotIn("state_class", config)
        self.assertIn("control_quality", [p.key for p, _ in meter_values(self.meter)])
        # a few watts of wander change no payload
        before = {p.key: format_value(v, p.decimals) for p, v in control_values(self.meter)}
        self.clock.advance(0.5)
        self.ask(1, 4)
        after = {p.key: format_value(v, p.decimals) for p, v in control_values(self.meter)}
        self.assertEqual(before, after)
