"""One emulated Pro 3EM, wired: its routes, notification hub, UDP, Modbus and mDNS.

Built by :func:`build` from the device's options and the application's
:class:`~meteremu.devices.base.DeviceContext`: HTTP (and the WebSocket
upgrade on ``/rpc``) go on the app of the device's port; UDP and Modbus get
their own listeners (bound with every other port in
``privilegedStartService``); mDNS announces once the HTTP port is known.
Request counts, errors, latencies and dropped datagrams go to the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred

from meteremu.devices.base import DeviceContext
from meteremu.devices.shelly import http as shelly_http
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.hub import NotifyHub
from meteremu.devices.shelly.identity import client_identity, generate_mac, make_identity
from meteremu.devices.shelly.options import Options, mdns_options
from meteremu.devices.shelly.rpc import CallContext
from meteremu.devices.shelly.udp import ShellyUDP
from meteremu.devices.shelly.ws import ShellyWebSocketFactory, websocket_resource
from meteremu.exporters.prometheus import Metrics
from meteremu.listeners import Listener, all_ready, udp_listener


class HubService(Service):
    """Starts and stops a device's WebSocket notification hub."""

    def __init__(self, hub: NotifyHub) -> None:
        self.hub = hub

    def startService(self) -> None:
        super().startService()
        self.hub.start()

    def stopService(self) -> None:
        super().stopService()
        self.hub.stop()


class ShellyService(MultiService):
    """A running Pro 3EM: the device and the services of its transports."""

    def __init__(self, device: ShellyDevice) -> None:
        super().__init__()
        self.device = device
        self.hub: NotifyHub | None = None
        self.udp: list[Listener] = []
        self.modbus: Any = None  # meteremu.devices.shelly.modbus.ModbusService when configured
        self.mdns: Any = None  # meteremu.devices.shelly.mdns.MdnsService when configured

    def ready(self) -> Deferred[Any]:
        """Fires when every listener and the mDNS announcement are up; fails with the first error."""
        waits = [listener.ready for listener in self.udp]
        return all_ready(waits + [part.ready for part in (self.modbus, self.mdns) if part is not None])


def observe_requests(device: ShellyDevice, metrics: Metrics) -> None:
    """Count every request and every error answered (canonical names only: bounded labels)."""
    device_id = device.identity.device_id
    requests, errors = metrics.requests.inc, metrics.errors.inc

    def observe(method: str, ctx: CallContext) -> None:
        requests(device_id, ctx.transport, method)

    def observe_error(code: int, ctx: CallContext) -> None:
        errors(device_id, ctx.transport, str(code))

    device.core.observers.append(observe)
    device.core.error_observers.append(observe_error)


def drop_counter(metrics: Metrics, device_id: str) -> Callable[[str], None]:
    inc = metrics.dropped.inc
    return lambda reason: inc(device_id, reason)


def build(options: Options, ctx: DeviceContext) -> ShellyService:
    identity = make_identity(options, ctx.mac(options.mac, generate_mac))
    clients = {ip: client_identity(identity, ctx.mac(client.mac, generate_mac, client=ip),
                                     options.FACE.prefix)
               for ip, client in options.clients.items()}
    device = ShellyDevice(options, identity, ctx.meter(options.meter), ctx.reactor,
                          udp_ports=options.udp_ports, modbus=options.modbus_port is not None,
                          tz=time.tzname[0] if time.tzname else None, client_identities=clients)
    observe_requests(device, ctx.metrics)
    service = ShellyService(device)
    latency = ctx.metrics.observe_latency
    site = ctx.sites.app(options.http_port)
    ws_resource = None
    if options.websocket:
        hub = service.hub = NotifyHub(device, ctx.reactor, options.notify_interval, options.notify_epsilon)
        factory = ShellyWebSocketFactory(device, hub, latency)
        HubService(hub).setServiceParent(service)
        ws_resource = lambda: websocket_resource(factory)  # noqa: E731
    shelly_http.install_routes(site, device, ws_resource=ws_resource, observe_latency=latency)
    if options.gen1_endpoints:
        from meteremu.devices.shelly import gen1

        gen1.install_routes(site, device)
    for port in (options.http_port, *options.websocket_ports):
        ctx.sites.accept_bodies(port, b"/rpc", shelly_http.MAX_BODY, shelly_http.refusal(device))
    for extra in options.websocket_ports:
        ctx.sites.share(extra, site, f"devices[{ctx.index}].websocket_ports")
    udp_host = options.udp_bind or ctx.host
    for udp_port in options.udp_ports:
        proto = ShellyUDP(device.core, options.udp_max_bytes, udp_host,
                          on_drop=drop_counter(ctx.metrics, identity.device_id), observe_latency=latency,
                          clock=ctx.reactor)
        # One byte more than the limit is read, so a longer datagram is seen (and dropped) as such.
        listener = udp_listener(ctx.reactor, udp_port, proto, udp_host,
                                max_packet_size=options.udp_max_bytes + 1)
        listener.setServiceParent(service)
        service.udp.append(listener)
    if options.modbus_port is not None:
        from meteremu.devices.shelly.modbus import ModbusService

        service.modbus = ModbusService(device, options.modbus_bind or ctx.host, options.modbus_port,
                                       options.modbus_unit_id, ctx.reactor, connections=ctx.connections)
        service.modbus.setServiceParent(service)
    mdns = mdns_options(options.mdns)
    if mdns is not None:
        from meteremu.devices.shelly.mdns import MdnsService

        service.mdns = MdnsService(identity, ctx.sites.real_port(options.http_port), mdns, reactor=ctx.reactor)
        service.mdns.setServiceParent(service)
    return service
