"""The SMA Energy Meter source's I/O: one UDP socket, datagrams decoded by :mod:`.parse`.

* multicast: the socket is bound to the Speedwire port on all addresses
  (shared with other listeners, ``SO_REUSEADDR``) and joins the group on
  the configured interface;
* unicast: bound to ``listen`` (default all) and the port.

A datagram of the configured serial is one sample (timed by its arrival). The
datagrams of other meters on the LAN are counted per serial and never read;
without a configured serial the source reads the one meter it hears, and
stops (meter down) as soon as it hears two, naming their serials. Garbage and
out-of-range samples are refused, each cause logged once. The meter is not
kept alive by the socket: a meter that stops sending goes stale after
``stale_after`` (3 x ``interval`` by default). A port that cannot be bound
(or an interface that does not exist) marks the meter down and is retried
every ``retry`` seconds.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import DatagramProtocol

from meteremu.clocks import wall
from meteremu.interfaces import IReactor
from meteremu.meter import Meter
from meteremu.sources.common import SourceStatus
from meteremu.sources.sma_energy_meter.options import SmaEnergyMeterOptions
from meteremu.sources.sma_energy_meter.parse import DatagramError, ValueRefused, decode, reading

MAX_SERIALS_SHOWN = 8


class SpeedwireListener(DatagramProtocol):
    def __init__(self, source: SmaEnergyMeterSource) -> None:
        self.source = source

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.source.datagram(datagram, addr)


class SmaEnergyMeterSource(SourceStatus, Service):
    type_name = "sma_energy_meter"

    def __init__(self, meter: Meter, options: SmaEnergyMeterOptions, reactor: IReactor,
                 clock: Any = None) -> None:
        self.meter, self.options, self.reactor = meter, options, reactor
        self.clock = clock or reactor
        self.port: Any = None
        self.state = "stopped"
        self._said: dict[str, str] = {}
        self._timer: IDelayedCall | None = None
        self._stopping = False
        self.datagrams = 0
        self.samples = 0
        self.refused = 0
        self.heard: dict[int, str] = {}  # serial -> the sender's address
        self._others: set[int] = set()  # other meters' serials, each logged once
        where = (f"{options.group}:{options.port}" if options.mode == "multicast"
                 else f"{options.listen or '*'}:{options.port}")
        self.meter.details = {"mode": options.mode, "listen": where, "serial": options.serial,
                              "connection": self.state}

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._listen()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stop_running("_timer")
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)

    # -- the socket -------------------------------------------------------------------------
    def _listen(self) -> None:
        if self._stopping:
            return
        try:
            self.port = self._open()
        except (CannotListenError, OSError, ValueError) as exc:
            self.port = None
            self._set_state("cannot listen")
            message = f"SMA Speedwire {self.meter.details['listen']}: {_why(exc)}; retrying in {self.options.retry:g}s"
            self._say("listen", message)
            self.meter.report_failure(message, down=True)
            self._call_later(self.options.retry, self._listen)
            return
        self._said.pop("listen", None)
        self._set_state("listening")

    def _open(self) -> Any:
        reactor: Any = self.reactor
        protocol = SpeedwireListener(self)
        if self.options.mode == "unicast":
            return reactor.listenUDP(self.options.port, protocol, interface=self.options.listen)
        interface = self._interface_address()
        port = reactor.listenMulticast(self.options.port, protocol, listenMultiple=True)
        try:
            # joinGroup answers at once on the reactors meteremu runs (a Deferred already fired).
            failures: list[Any] = []
            port.joinGroup(self.options.group, interface or "0.0.0.0").addErrback(failures.append)
            if failures:
                raise OSError(f"cannot join {self.options.group}: {failures[0].getErrorMessage()}")
        except BaseException:
            port.stopListening()
            raise
        return port

    def _interface_address(self) -> str | None:
        if self.options.interface is None:
            return None
        import ifaddr

        from meteremu.devices.shelly.mdns import MdnsError, resolve_interfaces

        try:
            return resolve_interfaces([self.options.interface], ifaddr.get_adapters(), "source.interface")[0]
        except MdnsError as exc:
            raise ValueError(str(exc)) from None

    # -- datagrams ----------------------------------------------------------------------------
    def datagram(self, data: bytes, addr: Any) -> None:
        if not self.running or self._stopping:
            return
        self.datagrams += 1
        sender = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)
        try:
            frame = decode(data)
        except DatagramError as exc:
            self.refused += 1
            self._say("garbage", f"SMA Speedwire: a datagram from {sender.rpartition(':')[0] or sender} ignored: {exc}")
            return
        if frame is None:
            return  # another Speedwire protocol (an inverter's): not a meter
        if frame.serial not in self.heard and len(self.heard) < 64:
            self.heard[frame.serial] = sender
            self.meter.details["heard"] = {str(s): a for s, a in list(self.heard.items())[:MAX_SERIALS_SHOWN]}
        wanted = self.options.serial
        if wanted is None:
            if len(self.heard) > 1:
                serials = ", ".join(str(s) for s in list(self.heard)[:MAX_SERIALS_SHOWN])
                message = f"several SMA energy meters on this LAN (serials {serials}): set source.serial"
                self._say("serial", message, "error")
                self.meter.report_failure(message, down=True)
                return
        elif frame.serial != wanted:
            if frame.serial not in self._others and len(self._others) < 64:
                self._others.add(frame.serial)
                self._say("others", f"SMA Speedwire: also hearing meter {frame.serial} at {sender} (not ours)",
                          "info")
            return
        self.meter.details.update(susy_id=frame.susy_id, sw_version=frame.sw_version, sender=sender,
                                  serial=frame.serial)
        try:
            sample = reading(frame, wall(self.clock), self.options.max_power, self.options.invert)
        except ValueRefused as exc:
            self.refused += 1
            message = f"SMA Energy Meter {frame.serial}: {exc}; sample refused"
            self._say("value", message)
            self.meter.report_failure(message, down=False)
            return
        self._said.pop("value", None)
        self.samples += 1
        self.meter.details["samples"] = self.samples
        self.meter.update(sample)


def _why(exc: BaseException) -> str:
    if isinstance(exc, CannotListenError):
        return f"cannot listen: {exc.socketError}"
    return str(exc)
