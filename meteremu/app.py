"""Builds the running meteremu from a Config: meters, sources, devices, web.

``build()`` returns an :class:`App` holding the ``MultiService`` tree and
references to its parts, so tests can start a whole service on port 0 with a
``Clock`` or the real reactor and then talk to it with real clients.

Order matters: the store is the first child, so MultiService stops it last and
its final save sees the counters after every source has stopped.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from klein import Klein
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.web.server import Site

from meteremu.config import Config, MeterConfig
from meteremu.devices.shelly import http as shelly_http
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.identity import generate_mac, make_identity
from meteremu.devices.shelly.options import mdns_options
from meteremu.devices.shelly.udp import ShellyUDP
from meteremu.devices.shelly.ws import NotifyHub, ShellyWebSocketFactory, websocket_resource
from meteremu.exporters import exporter_module
from meteremu.exporters.prometheus import Metrics
from meteremu.logs import logger
from meteremu.meter import Meter, default_stale_after
from meteremu.meterset import MeterSet
from meteremu.sources import source_module
from meteremu.store import Store
from meteremu.web import ops

log = logger(__name__)


class StartupError(Exception):
    """A part could not start (port taken, bad certificate…): stop the process."""


class Listener(Service):
    """A port bound in ``privilegedStartService``, that knows its real port.

    A port that cannot be bound raises :class:`StartupError` with a message
    naming the address, so the process stops at once instead of limping on.
    ``listen`` is ``reactor.listenTCP``/``listenUDP`` with its arguments bound.
    """

    def __init__(self, listen: Any, port: int, interface: str, what: str) -> None:
        self.listen, self.requested, self.interface, self.what = listen, port, interface, what
        self.listening: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.listening is None:
            try:
                self.listening = self.listen(self.requested, interface=self.interface)
            except CannotListenError as exc:
                raise StartupError(
                    f"cannot listen for {self.what} on {self.interface or '*'}:{self.requested}: "
                    f"{exc.socketError}") from None

    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()

    @property
    def port(self) -> int:
        return self.listening.getHost().port

    @property
    def protocol(self) -> Any:
        return self.listening.protocol

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.listening is not None:
            d = self.listening.stopListening()
            self.listening = None
            return d
        return None


def tcp_listener(reactor: Any, port: int, factory: Any, interface: str, what: str) -> Listener:
    return Listener(lambda p, interface: reactor.listenTCP(p, factory, interface=interface), port, interface, what)


def udp_listener(reactor: Any, port: int, protocol: Any, interface: str) -> Listener:
    return Listener(lambda p, interface: reactor.listenUDP(p, protocol, interface=interface),
                    port, interface, "UDP RPC")


class QuietSite(Site):
    """A Site without per-request access logs.

    Batteries poll about once a second, forever: an access log line per poll
    would drown everything else in the journal (and wear a Pi's SD card).
    Requests are counted in /metrics instead.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


class _HubService(Service):
    """Starts and stops a device's WebSocket notification hub."""

    def __init__(self, hub: NotifyHub) -> None:
        self.hub = hub

    def startService(self) -> None:
        super().startService()
        self.hub.start()

    def stopService(self) -> None:
        super().stopService()
        self.hub.stop()


def _drop_counter(metrics: Metrics, device_id: str) -> Any:
    inc = metrics.dropped.inc
    return lambda reason: inc(device_id, reason)


@dataclass
class App:
    config: Config
    service: MultiService
    store: Store
    metrics: Metrics
    meters: MeterSet
    devices: list[ShellyDevice] = field(default_factory=list)
    http: dict[int, Listener] = field(default_factory=dict)
    udp: list[Listener] = field(default_factory=list)
    modbus: list[Any] = field(default_factory=list)
    hubs: list[NotifyHub] = field(default_factory=list)
    exporters: dict[str, Any] = field(default_factory=dict)
    reactor: Any = None
    sources: dict[str, Service] = field(default_factory=dict)
    retired: dict[str, Meter] = field(default_factory=dict)
    watcher: Any = None
    forecast: Any = None  # meteremu.forecast.trainer.ForecastService when forecast.enabled

    # -- meters at runtime (conf.d hot reload) --------------------------------
    def add_meter(self, mc: MeterConfig) -> Meter:
        """Create (or revive) a meter and start its source.

        A meter removed earlier and added again gets its old Meter object
        back, so a device still serving it and its counters carry on.
        """
        meter = self.retired.pop(mc.name, None)
        if meter is None:
            meter = Meter(mc.name, self.reactor, source_type=mc.source.type)
            key = f"meter:{mc.name}:energy"
            saved = self.store.get(key)
            if isinstance(saved, dict):
                meter.energy.restore(saved)
            self.store.register(key, meter.energy.to_dict)
        self._configure(meter, mc)
        self.meters.add(meter)
        return meter

    def _configure(self, meter: Meter, mc: MeterConfig) -> None:
        module = source_module(mc.source.type)
        interval = getattr(mc.source.options, "interval", None)
        meter.stale_after = mc.stale_after or default_stale_after(interval, getattr(module, "PUSH", False))
        meter.source_type = mc.source.type
        source = module.make_source(meter, mc.source.options, self.reactor, self.store)
        self.sources[mc.name] = source
        source.setServiceParent(self.service)

    def replace_meter(self, mc: MeterConfig) -> Deferred[None]:
        """Restart just this meter's source with new options (same Meter)."""
        meter = self.meters[mc.name]
        d = self._stop_source(mc.name)
        d.addCallback(lambda _: self._configure(meter, mc))
        return d

    def remove_meter(self, name: str) -> Deferred[None]:
        """Stop the source and take the meter out (exporters follow)."""
        meter = self.meters.remove(name)
        self.retired[name] = meter
        return self._stop_source(name)

    def _stop_source(self, name: str) -> Deferred[None]:
        source = self.sources.pop(name, None)
        if source is None:
            return succeed(None)
        return maybeDeferred(source.disownServiceParent).addCallback(lambda _: None)
    async_parts: list[Any] = field(default_factory=list)

    def overview(self) -> dict[str, Any]:
        """``/admin/overview``: the clients of every device."""
        errors = dict(self.watcher.errors) if self.watcher is not None else {}
        return {"config_errors": errors, "devices": {
            (device.options.name or str(index)): {
                "id": device.identity.device_id, "meter": device.meter.name,
                "model": device.identity.model, "serial": device.identity.serial,
                "manufacturer": device.identity.manufacturer,
                "clients": device.clients.overview(),
                "active_batteries": device.clients.active_batteries(),
            } for index, device in enumerate(self.devices)}}

    def ready(self) -> Deferred[Any]:
        """Fires when every asynchronously starting part is up; fails with the first error."""
        waits = [part.ready for part in self.async_parts]
        if not waits:
            return succeed(None)
        return DeferredList(waits, fireOnOneErrback=True, consumeErrors=True).addErrback(
            lambda f: f.value.subFailure)

    def http_port(self, index: int = 0) -> int:
        return list(self.http.values())[index].port


def _device_mac(store: Store, key: str, configured: str) -> str:
    if configured != "auto":
        return configured
    mac = store.get(key)
    if not isinstance(mac, str):
        mac = generate_mac()
        store.put(key, mac)
        log.info("generated MAC {mac} for {key} (kept in the store)", mac=mac, key=key)
    return mac


def build(config: Config, reactor: Any) -> App:
    """Build the service tree (nothing listens until it is started)."""
    top = MultiService()
    store = Store(config.store.path, config.store.persist_interval, clock=reactor)
    store.setServiceParent(top)
    started_at = reactor.seconds()

    meters = MeterSet()
    app = App(config, top, store, Metrics(lambda: meters.values()), meters, reactor=reactor)
    metrics = app.metrics
    for mc in config.meters.values():
        app.add_meter(mc)

    sites: dict[int, Klein] = {}
    main_port = config.server.http_port
    main_app = Klein()
    sites[main_port] = main_app
    ops.install_routes(main_app, lambda: meters.values(), reactor, started_at,
                       metrics if config.exporters.prometheus.enabled else None,
                       overview=app.overview)
    metrics.add_devices(lambda: app.devices)

    device_parts: list[Service] = []
    for index, dc in enumerate(config.devices):
        options = dc.options
        # Keyed by position, not name: renaming a device must not change its
        # MAC (Home Assistant's unique id is derived from it).
        key = f"device:{index}:mac"
        identity = make_identity(options, _device_mac(store, key, options.mac))
        device = ShellyDevice(options, identity, meters[options.meter], reactor,
                              udp_ports=options.udp_ports,
                              modbus=options.modbus_port is not None,
                              tz=time.tzname[0] if time.tzname else None)
        _observe_requests(device, metrics)
        app.devices.append(device)
        port = options.http_port if options.http_port is not None else main_port
        klein_app = sites.setdefault(port, Klein())
        latency = metrics.observe_latency
        ws_resource = None
        if options.websocket:
            hub = NotifyHub(device, reactor, options.notify_interval, options.notify_epsilon)
            factory = ShellyWebSocketFactory(device, hub, latency)
            device_parts.append(_HubService(hub))
            ws_resource = lambda factory=factory: websocket_resource(factory)  # noqa: E731
            app.hubs.append(hub)
        shelly_http.install_routes(klein_app, device, ws_resource=ws_resource, observe_latency=latency)
        for extra in options.websocket_ports:
            if extra in sites and sites[extra] is not klein_app:
                raise StartupError(f"devices[{index}].websocket_ports: port {extra} already serves another device")
            sites[extra] = klein_app
        host = config.server.host
        for udp_port in options.udp_ports:
            proto = ShellyUDP(device.core, options.udp_max_bytes, options.udp_bind or host,
                              on_drop=_drop_counter(metrics, identity.device_id), observe_latency=latency)
            listener = udp_listener(reactor, udp_port, proto, options.udp_bind or host)
            device_parts.append(listener)
            app.udp.append(listener)
        if options.modbus_port is not None:
            from meteremu.devices.shelly.modbus import ModbusService

            modbus = ModbusService(device, options.modbus_bind or host, options.modbus_port,
                                   options.modbus_unit_id, reactor)
            device_parts.append(modbus)
            app.async_parts.append(modbus)
            app.modbus.append(modbus)
        mdns = mdns_options(options.mdns)
        if mdns is not None:
            from meteremu.devices.shelly.mdns import MdnsService

            service = MdnsService(identity, lambda port=port: app.http[port].port, mdns, reactor=reactor)
            device_parts.append(service)
            app.async_parts.append(service)

    # --- forecasting and dashboard (meteremu.forecast, meteremu.web.dashboard) ---
    # numpy/scikit-learn are imported only here, only when forecasting is on.
    # The dashboard (/ui) is always there; without forecasting it says so.
    if config.forecast.enabled:
        from meteremu.forecast.trainer import ForecastService

        app.forecast = ForecastService(config.forecast, meters, store, reactor)
        app.forecast.setServiceParent(top)
    from meteremu.web import dashboard

    dashboard.install_routes(main_app, meters, reactor, store=store, forecast=app.forecast)
    # --- end forecasting and dashboard ---
    for port, klein_app in sites.items():
        root: Any = klein_app.resource()
        if config.server.cors.enabled:
            root = ops.CORS(root, config.server.cors.origins)
        listener = tcp_listener(reactor, port, QuietSite(root), config.server.host, "HTTP")
        listener.setServiceParent(top)
        app.http[port] = listener
    # After the HTTP listeners, so mDNS can announce their real ports.
    for part in device_parts:
        part.setServiceParent(top)
    if config.conf_dir is not None and config.reload.enabled:
        from meteremu.confdir import ConfDirWatcher

        app.watcher = ConfDirWatcher(config.conf_dir, app, reactor, config.reload.debounce,
                                     config.reload.poll_interval)
        app.watcher.setServiceParent(top)
    # Exporters last: MultiService stops them first, so MQTT says "offline"
    # and InfluxDB flushes while the meters are still there.
    for kind, options in config.exporters.others.items():
        exporter = exporter_module(kind).make_exporter(options, meters, reactor, metrics, store)
        exporter.setServiceParent(top)
        app.exporters[kind] = exporter
        if hasattr(exporter, "ready"):
            app.async_parts.append(exporter)
    return app


def _observe_requests(device: ShellyDevice, metrics: Metrics) -> None:
    inc = metrics.requests.inc

    def observe(method: str, ctx: Any) -> None:
        inc(device.identity.device_id, ctx.transport, method)  # canonical names only: bounded labels

    def observe_error(code: int, ctx: Any) -> None:
        error(device.identity.device_id, ctx.transport, str(code))

    error = metrics.errors.inc
    device.core.observers.append(observe)
    device.core.error_observers.append(observe_error)


def fail_fast(reactor: Any, message: str) -> None:
    """Report a fatal start-up problem on one line and stop with status 1."""
    import os

    log.critical("{text}", text=message)
    sys.stderr.write(f"meteremu: {message}\n")
    sys.stderr.flush()
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)
