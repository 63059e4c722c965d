"""One emulated SMA Energy Meter, wired: a UDP socket and a datagram every ``interval``.

The socket is bound with every other port (``privilegedStartService``), to
an ephemeral port on the multicast interface's address (or all), with the
configured TTL, outgoing interface and loopback. A send that fails (no route
to a unicast receiver, the interface went down) is logged once per cause and
retried on the next tick: the meter never stops because one receiver is gone.
"""

from __future__ import annotations

from typing import Any

import ifaddr
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall

from meteremu.devices.base import DeviceContext, random_mac
from meteremu.devices.shelly.mdns import MdnsError, resolve_interfaces
from meteremu.devices.sma.device import SmaEnergyMeter, serial_from_key
from meteremu.devices.sma.options import Options
from meteremu.listeners import Listener, StartupError, all_ready
from meteremu.logs import logger

log = logger(__name__)


class SpeedwireSender(DatagramProtocol):
    def __init__(self, device: SmaEnergyMeter, destinations: list[tuple[str, int]], ttl: int,
                 interface: str | None, loopback: bool) -> None:
        self.device = device
        self.destinations = destinations
        self.ttl, self.interface, self.loopback = ttl, interface, loopback
        self.sent = 0
        self._last_problem: str | None = None

    def startProtocol(self) -> None:
        transport: Any = self.transport
        transport.setTTL(self.ttl)
        transport.setLoopbackMode(1 if self.loopback else 0)
        if self.interface is not None:
            transport.setOutgoingInterface(self.interface)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Ignored: an Energy Meter answers nothing."""

    def _problem(self, problem: str | None) -> None:
        if problem != self._last_problem:
            if problem is not None:
                log.warn("SMA Energy Meter {id}: {problem}", id=self.device.identity.device_id, problem=problem)
            elif self._last_problem is not None:
                log.info("SMA Energy Meter {id}: sending again", id=self.device.identity.device_id)
        self._last_problem = problem

    def send(self) -> None:
        """One tick: never raises, so the LoopingCall keeps the meter sending."""
        try:
            self._send()
        except Exception:  # a bug: log its traceback once per cause, keep ticking
            if self._last_problem != "bug":
                log.failure("SMA Energy Meter {id}: sending failed", id=self.device.identity.device_id)
            self._last_problem = "bug"

    def _send(self) -> None:
        if self.transport is None:
            return
        data = self.device.datagram()
        if data is None:
            self._problem(f"not sending: {self.device.silent_reason}")
            return
        problem = None
        for destination in self.destinations:
            try:
                self.transport.write(data, destination)
                self.sent += 1
            except OSError as e:
                problem = f"cannot send to {destination[0]}:{destination[1]}: {e}"
        self._problem(problem)


class SmaService(MultiService):
    def __init__(self, device: SmaEnergyMeter, listener: Listener, sender: SpeedwireSender,
                 interval: float, clock: Any) -> None:
        super().__init__()
        self.device = device
        self.listener = listener
        self.sender = sender
        listener.setServiceParent(self)
        self.loop = LoopingCall(sender.send)
        self.loop.clock = clock
        self.interval = interval

    def startService(self) -> None:
        super().startService()
        self.loop.start(self.interval, now=True)

    def stopService(self) -> Any:
        if self.loop.running:
            self.loop.stop()
        return super().stopService()

    def ready(self) -> Deferred[Any]:
        return all_ready([self.listener.ready])


def outgoing_address(interface: str | None) -> str | None:
    """The IPv4 address of ``interface`` (a name or an address of this machine)."""
    if interface is None:
        return None
    try:
        return resolve_interfaces([interface], ifaddr.get_adapters(), "interface")[0]
    except MdnsError as e:
        raise StartupError(f"sma_energy_meter: {e}") from None


def build(options: Options, ctx: DeviceContext) -> SmaService:
    # The store keeps 12 random hex digits per device position (as a face's MAC), so
    # the serial a receiver paired with survives restarts.
    serial = options.serial or serial_from_key(ctx.mac("auto", lambda: random_mac(random_mac(""))))
    device = SmaEnergyMeter(options, serial, ctx.meter(options.meter), ctx.reactor)
    destinations = [(address, options.port) for address in options.destinations]
    reactor: Any = ctx.reactor

    def listen(port: int, interface: str) -> Any:
        # The address is resolved at start, so an interface named in the
        # config that is missing is a one-line start-up error.
        outgoing = outgoing_address(options.interface)
        sender.interface = outgoing
        return reactor.listenMulticast(port, sender, interface=outgoing or "", listenMultiple=True)

    sender = SpeedwireSender(device, destinations, options.ttl, None, options.loopback)
    listener = Listener(listen, 0, options.interface or "", "SMA Speedwire")
    return SmaService(device, listener, sender, options.interval, ctx.reactor)
