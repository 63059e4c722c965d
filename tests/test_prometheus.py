"""/metrics naming and the extras families (pure: the collector on a Meter)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.exporters.prometheus import Metrics
from meteremu.meter import Meter
from meteremu.reading import PhaseReading, Reading


class CollectorTests(SynchronousTestCase):
    def test_families_and_units(self):
        clock = Clock()
        meter = Meter("grid", clock, stale_after=5)
        meter.update(Reading((PhaseReading.from_power(1200.0),), 1.0,
                             extras={"inverter.482211": 231.0, "circuit.hvac": 600.0,
                                     "circuit_share.hvac": 0.5, "gas_m3": 1234.5}))
        clock.advance(1)
        meter.update(Reading((PhaseReading.from_power(1000.0),), 2.0))  # inverter not in this one
        text = Metrics(lambda: [meter]).render().decode()
        self.assertIn('meteremu_power_watts{meter="grid",phase="a"} 1000.0', text)
        self.assertIn('meteremu_power_watts{meter="grid",phase="total"} 1000.0', text)
        # Sporadic extras keep their last value.
        self.assertIn('meteremu_inverter_power_watts{meter="grid",serial="482211"} 231.0', text)
        self.assertIn('meteremu_circuit_power_watts{circuit="hvac",meter="grid"} 600.0', text)
        self.assertIn('meteremu_circuit_share_ratio{circuit="hvac",meter="grid"} 0.5', text)
        self.assertIn('meteremu_meter_value{meter="grid",name="gas_m3"} 1234.5', text)
        self.assertIn("# TYPE meteremu_energy_import_watt_hours_total counter", text)
        self.assertIn('meteremu_energy_import_watt_hours_total{meter="grid",phase="a"}', text)
        for family in ("meteremu_voltage_volts", "meteremu_current_amperes", "meteremu_frequency_hertz"):
            self.assertIn(f"# TYPE {family} gauge", text)
