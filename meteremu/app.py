"""Builds the running meteremu from a Config: meters, devices, web, exporters.

``build()`` returns an :class:`App` holding the ``MultiService`` tree and
references to its parts, so tests can start a whole service on port 0 with a
``Clock`` or the real reactor and then talk to it with real clients.

The tree, in start order (``MultiService`` stops in the reverse order)::

    store                  first: stopped last, its final save sees every counter
    meters                 the meter manager and one source per meter
    days                   each meter's counters at local midnight (dashboard, InfluxDB)
    forecast               (forecast.enabled)
    http                   a listener per HTTP port (bound before the devices start,
                           so mDNS can announce the real port)
    devices                one service per device plug-in (meteremu.devices)
    watcher                conf.d hot reload (talks to the meter manager only)
    exporters              last: stopped first, so MQTT says "offline" and
                           InfluxDB flushes while the meters are still there

Every port is bound in ``privilegedStartService`` (``meteremu.listeners``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred

from meteremu.config import Config, ServerOptions
from meteremu.connections import ConnectionLimits, ConnectionRegistry
from meteremu.days import DayLedger
from meteremu.devices import device_module
from meteremu.devices.base import DeviceContext, DeviceService
from meteremu.exporters import exporter_module
from meteremu.exporters.prometheus import Metrics
from meteremu.interfaces import IReactor
from meteremu.listeners import Listener, StartupError, all_ready
from meteremu.logs import logger
from meteremu.metermanager import MeterManager
from meteremu.meterset import MeterSet
from meteremu.store import Store
from meteremu.web import ops
from meteremu.web.guard import Guard, own_names
from meteremu.web.sites import Sites

__all__ = ["App", "StartupError", "build", "fail_fast"]

log = logger(__name__)


@dataclass
class App:
    """The running parts, for ``twistd``'s service and for tests."""

    config: Config
    service: MultiService
    store: Store
    metrics: Metrics
    manager: MeterManager
    sites: Sites
    days: DayLedger
    device_services: list[DeviceService] = field(default_factory=list)
    exporters: dict[str, Any] = field(default_factory=dict)
    reactor: IReactor | None = None
    watcher: Any = None  # meteremu.confdir.ConfDirWatcher with conf_dir and reload
    forecast: Any = None  # meteremu.forecast.trainer.ForecastService when forecast.enabled
    async_parts: list[Any] = field(default_factory=list)  # exporters with a ``ready``
    connections: ConnectionRegistry | None = None  # every accepted TCP connection, against the caps

    @property
    def meters(self) -> MeterSet:
        return self.manager.meters

    @property
    def sources(self) -> dict[str, Any]:
        """Source services by meter name."""
        return self.manager.sources

    @property
    def devices(self) -> list[Any]:
        """The emulated devices (each service's face), in config order."""
        return [service.device for service in self.device_services]

    @property
    def http(self) -> dict[int, Listener]:
        """HTTP listeners by configured port."""
        return self.sites.bound

    def http_port(self, index: int = 0) -> int:
        return list(self.http.values())[index].port

    def overview(self) -> dict[str, Any]:
        """``/admin/overview``: the clients of every device."""
        errors = self.watcher.public_errors() if self.watcher is not None else {}
        return {"config_errors": errors, "devices": {
            (getattr(device.options, "name", None) or str(index)): {
                "id": device.identity.device_id, "meter": device.meter.name,
                "model": device.identity.model, "serial": device.identity.serial,
                "manufacturer": device.identity.manufacturer,
                "clients": device.clients.overview(),
                "active_batteries": device.clients.active_batteries(),
                "control": control_overview(device),
            } for index, device in enumerate(self.devices)}}

    def ready(self) -> Deferred[Any]:
        """Fires when every asynchronously starting part is up; fails with the first error."""
        waits = [service.ready() for service in self.device_services]
        return all_ready(waits + [part.ready for part in self.async_parts])


def control_overview(device: Any) -> dict[str, Any] | None:
    """The active controller's view of a device's meter (None when the device has none)."""
    controller = getattr(device, "controller", None)
    return controller.overview() if controller is not None else None


def build(config: Config, reactor: IReactor) -> App:
    """Build the service tree (nothing listens until it is started)."""
    top = MultiService()
    store = Store(config.store.path, config.store.persist_interval, clock=reactor)
    store.setServiceParent(top)
    started_at = reactor.seconds()

    manager = MeterManager(reactor, store, config.meters)
    manager.setServiceParent(top)
    meters = manager.meters
    days = DayLedger(meters, store, reactor, config.tzinfo())
    days.setServiceParent(top)
    metrics = Metrics(meters.values)
    connections = ConnectionRegistry(connection_limits(config.server), reactor)
    sites = Sites(config.server.http_port, connections)
    app = App(config, top, store, metrics, manager, sites, days, reactor=reactor, connections=connections)

    ops.install_routes(sites.main, meters.values, reactor, started_at,
                       metrics if config.exporters.prometheus.enabled else None,
                       overview=app.overview, store=store.health)
    metrics.add_devices(lambda: app.devices)
    metrics.add_connections(connections)

    # numpy/scikit-learn are imported only here, only when forecasting is on.
    # The dashboard (/ui) is always there; without forecasting it says so.
    if not config.forecast.enabled:
        for name, mc in config.meters.items():
            if getattr(mc.source.options, "backfill", None):
                log.warn("meter {meter}: backfill is ignored while forecast.enabled is false "
                         "(the backfill is written to the forecast dataset)", meter=name)
    if config.forecast.enabled:
        from meteremu.forecast.trainer import ForecastService

        app.forecast = ForecastService(config.forecast, meters, store, reactor)
        app.forecast.setServiceParent(top)
    from meteremu.web import dashboard

    dashboard.install_routes(sites.main, meters, reactor, days, forecast=app.forecast)

    http = MultiService()
    http.setServiceParent(top)
    devices = MultiService()
    devices.setServiceParent(top)
    for index, dc in enumerate(config.devices):
        ctx = DeviceContext(index, reactor, store, metrics, meters, sites, config.server.host, connections)
        device = device_module(dc.type).make_device(dc.options, ctx)
        device.setServiceParent(devices)
        app.device_services.append(device)

    server = config.server
    names = own_names(server.allowed_hosts)

    def wrap(root: Any) -> Any:
        if server.cors.enabled:
            root = ops.CORS(root, server.cors.origins)
        return Guard(root, names, server.admin_token, server.ingress_proxies)

    for listener in sites.listeners(reactor, server.host, wrap).values():
        listener.setServiceParent(http)

    if config.conf_dir is not None and config.reload.enabled:
        from meteremu.confdir import ConfDirWatcher

        app.watcher = ConfDirWatcher(config.conf_dir, manager, reactor, config.reload.debounce,
                                     config.reload.poll_interval)
        app.watcher.setServiceParent(top)
    for kind, options in config.exporters.others.items():
        exporter = exporter_module(kind).make_exporter(options, meters, reactor, metrics, store, days)
        exporter.setServiceParent(top)
        app.exporters[kind] = exporter
        if hasattr(exporter, "ready"):
            app.async_parts.append(exporter)
    return app


def connection_limits(server: ServerOptions) -> ConnectionLimits:
    """The configured caps, the total one kept under the open-files limit (meteremu.openfiles)."""
    from meteremu.openfiles import connection_budget, soft_limit

    limits = server.connection_limits()
    budget = connection_budget(limits.max_connections, soft_limit())
    if budget < limits.max_connections:
        log.warn("server.max_connections {configured} does not fit the open-files limit; using {budget}",
                 configured=limits.max_connections, budget=budget)
        limits = dataclasses.replace(limits, max_connections=budget)
    return limits


def fail_fast(reactor: IReactor, message: str) -> None:
    """Report a fatal start-up problem on one line and stop with status 1."""
    log.critical("{text}", text=message)
    sys.stderr.write(f"meteremu: {message}\n")
    sys.stderr.flush()
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)
