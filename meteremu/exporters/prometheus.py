"""Prometheus metrics: meters (per phase), sources, and requests by transport.

Each service tree owns its own ``CollectorRegistry`` (tests build several), and
meter values are read at scrape time by a custom collector, so there is no
per-reading bookkeeping on the hot path. Names follow Prometheus conventions
(``_watts``, ``_volts``, ``_amperes``, ``_watt_hours_total``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meteremu.meter import Freshness, Meter
from meteremu.reading import PHASE_NAMES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MeterCollector(Collector):
    """Reads every meter's current state when scraped."""

    def __init__(self, meters: Callable[[], Iterable[Meter]]) -> None:
        self._meters = meters

    def collect(self) -> Iterator[Metric]:
        gauges = {
            "power": GaugeMetricFamily("meteremu_power_watts", "Active power, + import / - export", labels=["meter", "phase"]),
            "apparent": GaugeMetricFamily("meteremu_apparent_power_voltamperes", "Apparent power", labels=["meter", "phase"]),
            "voltage": GaugeMetricFamily("meteremu_voltage_volts", "Voltage", labels=["meter", "phase"]),
            "current": GaugeMetricFamily("meteremu_current_amperes", "Current", labels=["meter", "phase"]),
            "pf": GaugeMetricFamily("meteremu_power_factor", "Power factor", labels=["meter", "phase"]),
            "freq": GaugeMetricFamily("meteremu_frequency_hertz", "Frequency", labels=["meter", "phase"]),
        }
        energy_in = CounterMetricFamily("meteremu_energy_import_watt_hours", "Energy imported", labels=["meter", "phase"])
        energy_out = CounterMetricFamily("meteremu_energy_export_watt_hours", "Energy exported", labels=["meter", "phase"])
        fresh = GaugeMetricFamily("meteremu_meter_state", "1 for the meter's current freshness state", labels=["meter", "state"])
        age = GaugeMetricFamily("meteremu_meter_sample_age_seconds", "Seconds since the last new sample", labels=["meter"])
        polls = CounterMetricFamily("meteremu_source_polls", "Source fetches by result", labels=["meter", "result"])
        last_ok = GaugeMetricFamily("meteremu_source_last_success_timestamp_seconds", "Last successful fetch", labels=["meter"])
        extras = GaugeMetricFamily("meteremu_meter_value", "Extra values a source reports", labels=["meter", "name"])
        inverters = GaugeMetricFamily("meteremu_inverter_power_watts", "Per-inverter output (Envoy)",
                                      labels=["meter", "serial"])
        circuits = GaugeMetricFamily("meteremu_circuit_power_watts", "Per-circuit power", labels=["meter", "circuit"])
        shares = GaugeMetricFamily("meteremu_circuit_share_ratio", "A circuit's share of the grid import",
                                   labels=["meter", "circuit"])
        by_kind = {"inverter": inverters, "circuit": circuits, "circuit_share": shares}
        for meter in self._meters():
            name = meter.name
            reading = meter.latest
            if reading is not None:
                for i, phase_name in enumerate(PHASE_NAMES[: len(reading.phases)]):
                    p = reading.phases[i]
                    labels = [name, phase_name]
                    gauges["power"].add_metric(labels, p.act_power)
                    gauges["apparent"].add_metric(labels, p.aprt_power)
                    gauges["voltage"].add_metric(labels, p.voltage)
                    gauges["current"].add_metric(labels, p.current)
                    gauges["pf"].add_metric(labels, p.pf)
                    gauges["freq"].add_metric(labels, p.freq)
                gauges["power"].add_metric([name, "total"], reading.total_act_power)
            for key, (value, _at) in meter.extras.items():
                kind, _, item = key.partition(".")
                family = by_kind.get(kind) if item else None
                if family is not None:
                    family.add_metric([name, item], value)
                else:
                    extras.add_metric([name, key], value)
            for i, counter in enumerate(meter.energy.phases):
                energy_in.add_metric([name, PHASE_NAMES[i]], counter.import_wh)
                energy_out.add_metric([name, PHASE_NAMES[i]], counter.export_wh)
            state = meter.freshness()
            for s in Freshness:
                fresh.add_metric([name, s.value], 1.0 if s is state else 0.0)
            sample_age = meter.age()
            if sample_age is not None:
                age.add_metric([name], sample_age)
            polls.add_metric([name, "ok"], meter.stats.fetches)
            polls.add_metric([name, "failed"], meter.stats.failures)
            if meter.stats.last_success is not None:
                last_ok.add_metric([name], meter.stats.last_success)
        yield from gauges.values()
        yield from (energy_in, energy_out, fresh, age, polls, last_ok, extras, inverters, circuits, shares)


class DeviceCollector(Collector):
    """Device identity (an info-style gauge) and the clients each device sees."""

    def __init__(self, devices: Callable[[], Iterable[Any]]) -> None:
        self._devices = devices

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "meteremu_device_info", "Emulated device identity",
            labels=["device", "model", "fw_id", "meter", "serial", "manufacturer"])
        clients = GaugeMetricFamily("meteremu_device_clients", "Clients seen within the scaling ttl",
                                    labels=["device", "transport", "battery"])
        batteries = GaugeMetricFamily("meteremu_device_active_batteries", "Batteries polling now",
                                      labels=["device"])
        for device in self._devices():
            ident = device.identity
            info.add_metric([ident.device_id, ident.model, ident.fw_id, device.meter.name,
                             ident.serial or "", ident.manufacturer], 1.0)
            counts: dict[tuple[str, str], int] = {}
            for client in device.clients.overview():
                key = (client["transport"], "true" if client["battery"] else "false")
                counts[key] = counts.get(key, 0) + 1
            for (transport, battery), n in sorted(counts.items()):
                clients.add_metric([ident.device_id, transport, battery], n)
            batteries.add_metric([ident.device_id], len(device.clients.active_batteries()))
        yield from (info, clients, batteries)


class Metrics:
    """The registry of one running meteremu, plus request instruments."""

    def __init__(self, meters: Callable[[], Iterable[Meter]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(MeterCollector(meters))
        self.requests = Counter(
            "meteremu_rpc_requests", "RPC requests by transport and method",
            ["device", "transport", "method"], registry=self.registry)
        self.errors = Counter(
            "meteremu_rpc_errors", "RPC requests answered with an error",
            ["device", "transport", "code"], registry=self.registry)
        self.latency = Histogram(
            "meteremu_rpc_request_duration_seconds", "Time to answer an RPC request",
            ["transport"], registry=self.registry,
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.dropped = Counter(
            "meteremu_dropped_datagrams", "Datagrams dropped (garbage, oversize, throttled)",
            ["device", "reason"], registry=self.registry)

    def observe_latency(self, transport: str, seconds: float) -> None:
        self.latency.labels(transport).observe(seconds)

    def add_devices(self, devices: Callable[[], Iterable[Any]]) -> None:
        """Expose each emulated device's identity and its clients."""
        self.registry.register(DeviceCollector(devices))

    def render(self) -> bytes:
        return generate_latest(self.registry)
