"""Prometheus metrics: meters (per phase), sources, and requests by transport.

Each service tree owns its own ``CollectorRegistry`` (tests build several), and
meter values are read at scrape time by a custom collector, so there is no
per-reading bookkeeping on the hot path. Names follow Prometheus conventions
(``_watts``, ``_volts``, ``_amperes``, ``_watt_hours_total``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from meteremu.meter import Freshness, Meter
from meteremu.reading import PHASE_NAMES

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MeterCollector:
    """Reads every meter's current state when scraped."""

    def __init__(self, meters: Callable[[], Iterable[Meter]]) -> None:
        self._meters = meters

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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


class DeviceCollector:
    """Device identity (an info-style gauge) and the clients each device sees."""

    def __init__(self, devices: Callable[[], Iterable[Any]]) -> None:
        self._devices = devices

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

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
        yield from battery_metrics(self._devices())


BATTERY_STATES = ("moving", "steady", "full", "empty")


def battery_metrics(devices: Iterable[Any]) -> Iterator[Metric]:
    """Per battery (MAC or IP): reported power, target, served value, share and state; the meter's
    control quality. From the device's controller, or (a CT relaying) from its battery table.
    Labels are bounded: a CT has 9 slots, a Shelly at most ``max_batteries`` batteries."""
    from prometheus_client.core import GaugeMetricFamily

    from meteremu.control import Quality

    def family(name: str, doc: str, *extra: str) -> Any:
        return GaugeMetricFamily(name, doc, labels=["device", "battery", *extra])

    power = family("meteremu_battery_power_watts", "Battery output it reports (W, + discharge; CT devices)")
    target = family("meteremu_battery_target_watts", "Battery output the controller aims at (W)")
    served = family("meteremu_battery_served_watts", "Last value served to the battery (W)")
    share = family("meteremu_battery_share", "Battery's share of the meter's batteries (weight, 0-1)")
    state = family("meteremu_battery_state", "Battery state as the controller sees it (1 = current)", "state")
    quality = GaugeMetricFamily("meteremu_control_quality", "Control state of the device's meter (1 = current)",
                                labels=["device", "quality"])
    for device in devices:
        device_id = device.identity.device_id
        controller = getattr(device, "controller", None)
        if controller is not None:
            current = controller.quality()
            for q in Quality:
                quality.add_metric([device_id, q.value], 1.0 if q is current else 0.0)
            rows = controller.overview()["batteries"]
        else:
            rows = [{"key": c["mac"], "power": c.get("power"), "served": c.get("served")}
                    for c in device.clients.overview() if "mac" in c]
        for row in rows:
            labels = [device_id, row["key"]]
            for gauge, key in ((power, "power"), (target, "target"), (served, "served"), (share, "share")):
                if row.get(key) is not None:
                    gauge.add_metric(labels, float(row[key]))
            if "state" in row:
                for name in BATTERY_STATES:
                    state.add_metric([*labels, name], 1.0 if row["state"] == name else 0.0)
    yield from (power, target, served, share, state, quality)


class LabelledCounter:
    """A counter per label tuple, kept in a plain dict and read at scrape time.

    Request counters are bumped for every datagram; prometheus_client's
    ``Counter.labels(...).inc()`` takes a lock and builds a key each time
    (about 3 µs, a tenth of a cached UDP answer). Everything here runs on
    the reactor thread, scrapes included, so a dict needs no lock.
    """

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.counts: dict[tuple[str, ...], int] = {}

    def inc(self, *values: str) -> None:
        counts = self.counts
        counts[values] = counts.get(values, 0) + 1

    def value(self, *values: str) -> int:
        return self.counts.get(values, 0)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, count in sorted(self.counts.items()):
            family.add_metric(values, count)
        yield family


class LabelledHistogram:
    """A histogram per label tuple, with the same trade-off as :class:`LabelledCounter`."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...],
                 buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = tuple(sorted(buckets))
        # per label tuple: [count per bucket (not cumulative; last = above all bounds), sum]
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *values: str) -> None:
        series = self.series.get(values)
        if series is None:
            series = self.series[values] = ([0] * (len(self.bounds) + 1), [0.0])
        series[0][bisect_left(self.bounds, value)] += 1
        series[1][0] += value

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, (counts, total) in sorted(self.series.items()):
            running, buckets = 0, []
            for le, n in zip(les, counts, strict=True):
                running += n
                buckets.append((le, running))
            family.add_metric(values, buckets, total[0])
        yield family


class ConnectionCollector:
    """Open TCP connections by kind, and those refused or evicted at the caps (meteremu.connections)."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry  # a ConnectionRegistry (duck-typed: count, refused, evicted)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        open_ = GaugeMetricFamily("meteremu_connections", "Open TCP connections (HTTP with WebSocket, Modbus)",
                                  labels=["kind"])
        modbus = self._registry.count("modbus")
        open_.add_metric(["http"], len(self._registry) - modbus)
        open_.add_metric(["modbus"], modbus)
        yield open_
        yield CounterMetricFamily("meteremu_connections_refused", "Connections refused at a cap",
                                  value=self._registry.refused)
        yield CounterMetricFamily("meteremu_connections_evicted",
                                  "Connections without a completed request closed to make room at a cap",
                                  value=self._registry.evicted)


class Metrics:
    """The collectors of one running meteremu, plus request instruments.

    prometheus_client itself is imported on first use (the first scrape, or
    an exporter that registers its own instruments): recording a request
    only bumps a dict, and a gateway nobody scrapes saves the library's
    memory (about 1 MiB, on a Pi).
    """

    def __init__(self, meters: Callable[[], Iterable[Meter]]) -> None:
        self._registry: CollectorRegistry | None = None
        self._collectors: list[Any] = [MeterCollector(meters)]
        self.requests = LabelledCounter(
            "meteremu_rpc_requests", "RPC requests by transport and method", ("device", "transport", "method"))
        self.errors = LabelledCounter(
            "meteremu_rpc_errors", "RPC requests that failed, by error code", ("device", "transport", "code"))
        self.latency = LabelledHistogram(
            "meteremu_rpc_request_duration_seconds", "Time to answer an RPC request", ("transport",),
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.dropped = LabelledCounter(
            "meteremu_dropped_datagrams", "Datagrams dropped (garbage, oversize, throttled)", ("device", "reason"))
        self._collectors += [self.requests, self.errors, self.latency, self.dropped]

    @property
    def registry(self) -> CollectorRegistry:
        """prometheus_client's registry with every collector, made on first use."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=True)
            for collector in self._collectors:
                self._registry.register(collector)
        return self._registry

    def observe_latency(self, transport: str, seconds: float) -> None:
        self.latency.observe(seconds, transport)

    def add_devices(self, devices: Callable[[], Iterable[Any]]) -> None:
        """Expose each emulated device's identity and its clients."""
        collector = DeviceCollector(devices)
        if self._registry is None:
            self._collectors.append(collector)
        else:
            self._registry.register(collector)

    def add_connections(self, registry: Any) -> None:
        """Expose the connection caps' counts (a meteremu.connections.ConnectionRegistry)."""
        collector = ConnectionCollector(registry)
        if self._registry is None:
            self._collectors.append(collector)
        else:
            self._registry.register(collector)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
