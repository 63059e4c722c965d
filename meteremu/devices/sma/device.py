"""One emulated SMA Energy Meter: identity, the meter it serves, and its next datagram.

The meter pushes; nobody polls it, so its face has no clients to list. Under
``on_stale: error`` no datagram goes out while the meter is stale or down: a
receiver sees the meter fall silent, as when a real one loses power, rather
than old numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meteremu.devices.sma import speedwire
from meteremu.devices.sma.options import Options
from meteremu.devices.stale import Unavailable, serving_reading
from meteremu.meter import IClock, Meter


@dataclass
class SmaIdentity:  # not frozen: base.FaceIdentity declares plain attributes
    device_id: str
    serial: str | None
    susy_id: int
    model: str = "SMA Energy Meter"
    fw_id: str = ".".join(str(part) for part in speedwire.DEFAULT_SW_VERSION)
    manufacturer: str = "SMA"


def serial_from_key(key: str) -> int:
    """A stable 10-digit serial from the stored random key (12 hex digits)."""
    return 1_000_000_000 + int(key, 16) % 3_000_000_000


class NoClients:
    """Receivers of a multicast are not known to the sender."""

    def overview(self) -> list[dict[str, Any]]:
        return []

    def active_batteries(self) -> list[str]:
        return []


class SmaEnergyMeter:
    def __init__(self, options: Options, serial: int, meter: Meter, clock: IClock) -> None:
        self.options = options
        self.serial = serial
        self.identity = SmaIdentity(device_id=f"sma-em-{serial}", serial=str(serial), susy_id=options.susy_id)
        self.meter = meter
        self.clock = clock
        self.clients = NoClients()
        self.silent_reason: str | None = None  # why the last datagram was not sent

    def datagram(self) -> bytes | None:
        """The datagram to send now, or ``None`` (``silent_reason`` says why)."""
        try:
            reading = serving_reading(self.meter, self.options.on_stale, self.clock)
            energy = [(p.import_wh, p.export_wh) for p in self.meter.energy.phases]
            tick = int(self.clock.seconds() * 1000)
            data = speedwire.encode(self.options.susy_id, self.serial, tick, reading, energy)
        except Unavailable as e:
            self.silent_reason = str(e)
            return None
        self.silent_reason = None
        return data
