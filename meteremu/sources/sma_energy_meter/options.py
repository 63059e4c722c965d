"""Options of the SMA Energy Meter source (``source: {type: sma_energy_meter, …}``). Pure."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from meteremu.configtypes import Duration
from meteremu.sources.jsonfields import DEFAULT_MAX_POWER

MULTICAST_GROUP = "239.12.255.254"
PORT = 9522


def _address_problem(text: str, multicast: bool) -> str | None:
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        return f"an IPv4 address; got {text!r}"
    if multicast and not address.is_multicast:
        return f"an IPv4 multicast group (SMA's is {MULTICAST_GROUP}); got {text}"
    return None


@dataclass(frozen=True)
class SmaEnergyMeterOptions:
    serial: int | None = field(default=None, metadata={
        "doc": "the meter's serial number (on its label; required when several meters share the LAN)"})
    mode: Literal["multicast", "unicast"] = field(default="multicast", metadata={
        "doc": "multicast: join the Speedwire group (what the meter sends by default); "
               "unicast: the meter is set to send to this machine's address"})
    group: str = field(default=MULTICAST_GROUP, metadata={"doc": "multicast: the Speedwire group"})
    interface: str | None = field(default=None, metadata={
        "doc": "multicast: the network interface (name such as eth0, or its IPv4 address) joining the group; "
               "default: the one the routing table picks"})
    listen: str = field(default="", metadata={
        "doc": "unicast: the local address to listen on (default: all)"})
    port: int = field(default=PORT, metadata={"doc": "UDP port (Speedwire's is 9522)"})
    interval: Duration = field(default=1.0, metadata={
        "doc": "how often the meter sends (Energy Meter 1 s, Home Manager 2.0 200 ms to 1 s); "
               "the meter is stale after 3 x this"})
    invert: bool = field(default=False, metadata={"doc": "multiply power by -1 (a meter measuring the other way)"})
    max_power: float = field(default=DEFAULT_MAX_POWER, metadata={"doc": "W: a power value beyond this is refused"})
    retry: Duration = field(default=5.0, metadata={"doc": "wait before listening again when the port is taken"})

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        if self.serial is not None and not 0 < self.serial <= 0xFFFFFFFF:
            errors.append(("serial", f"the meter's serial number (1 to 4294967295); got {self.serial}"))
        if not 0 < self.port < 65536:
            errors.append(("port", f"a UDP port; got {self.port}"))
        if self.mode == "multicast":
            problem = _address_problem(self.group, multicast=True)
            if problem:
                errors.append(("group", problem))
            if self.listen:
                errors.append(("listen", "mode: unicast (multicast listens on the group)"))
        else:
            if self.listen:
                problem = _address_problem(self.listen, multicast=False)
                if problem:
                    errors.append(("listen", problem))
            if self.interface is not None:
                errors.append(("interface", "mode: multicast (unicast listens on listen)"))
            if self.group != MULTICAST_GROUP:
                errors.append(("group", "mode: multicast"))
        if self.interface is not None and (not self.interface.strip() or " " in self.interface):
            errors.append(("interface", f"an interface name or its IPv4 address; got {self.interface!r}"))
        for name in ("interval", "retry"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                errors.append((name, "a duration greater than 0"))
        if not self.max_power > 0 or self.max_power == float("inf"):
            errors.append(("max_power", "a finite power in W greater than 0"))
        return errors
