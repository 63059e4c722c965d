"""/metrics naming and the extras families (pure: the collector on a Meter)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.exporters.prometheus import LabelledCounter, LabelledHistogram, Metrics
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


class RequestInstrumentTests(SynchronousTestCase):
    """The dict-backed request counter and histogram render as prometheus_client's would."""

    def test_counter(self):
        counter = LabelledCounter("meteremu_x", "X", ("device", "reason"))
        for _ in range(3):
            counter.inc("d1", "garbage")
        counter.inc("d1", "oversize")
        (family,) = counter.collect()
        self.assertEqual(family.type, "counter")
        self.assertEqual({(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples},
                         {("meteremu_x_total", (("device", "d1"), ("reason", "garbage"))): 3,
                          ("meteremu_x_total", (("device", "d1"), ("reason", "oversize"))): 1})
        self.assertEqual(counter.value("d1", "garbage"), 3)
        self.assertEqual(counter.value("d2", "garbage"), 0)

    def test_histogram_buckets_are_cumulative_and_inclusive(self):
        hist = LabelledHistogram("meteremu_t_seconds", "T", ("transport",), buckets=(0.001, 0.01, 0.1))
        for value in (0.0005, 0.001, 0.002, 0.05, 3.0):
            hist.observe(value, "udp")
        (family,) = hist.collect()
        samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
        # "le" is "less than or equal": 0.001 itself falls in the 0.001 bucket.
        self.assertEqual(samples[("meteremu_t_seconds_bucket", "0.001")], 2)
        self.assertEqual(samples[("meteremu_t_seconds_bucket", "0.01")], 3)
        self.assertEqual(samples[("meteremu_t_seconds_bucket", "0.1")], 4)
        self.assertEqual(samples[("meteremu_t_seconds_bucket", "+Inf")], 5)
        self.assertEqual(samples[("meteremu_t_seconds_count", None)], 5)
        self.assertAlmostEqual(samples[("meteremu_t_seconds_sum", None)], 3.0535)

    def test_rendered_text(self):
        metrics = Metrics(lambda: [])
        metrics.observe_latency("udp", 0.0003)
        metrics.requests.inc("dev", "udp", "EM.GetStatus")
        text = metrics.render().decode()
        self.assertIn('meteremu_rpc_request_duration_seconds_bucket{le="0.0002",transport="udp"} 0.0', text)
        self.assertIn('meteremu_rpc_request_duration_seconds_bucket{le="0.0005",transport="udp"} 1.0', text)
        self.assertIn('meteremu_rpc_requests_total{device="dev",method="EM.GetStatus",transport="udp"} 1.0', text)
        self.assertIn("# TYPE meteremu_rpc_request_duration_seconds histogram", text)
