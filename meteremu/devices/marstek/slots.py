"""The CT's battery table: up to 9 batteries keyed by MAC, forgotten after missed cycles (pure).

A real CT keeps 9 slots keyed by battery MAC and drops a battery that
missed about one or two cycles (specs/batteries.md §3.1). A slot is
forgotten after twice the battery's own poll interval (an average over its
polls), never sooner than ``floor`` seconds, and after 30 s while its
interval is not known yet. A tenth battery gets no slot (and no answer)
until one is free: a forged flood of MACs cannot push out batteries that
keep polling.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meteremu.meter import IClock

UNKNOWN_INTERVAL_TTL = 30.0


@dataclass
class Slot:
    mac: str
    ip: str
    port: int
    battery_type: str
    first_seen: float
    last_seen: float
    phase: str = ""
    power: int = 0
    participate: bool | None = None
    interval: float | None = None  # s, smoothed
    polls: int = 0
    answers: int = 0
    info_idx: int = 0
    last_answered: int = -1  # relay: the cycle it was last answered in
    served: float | None = None  # the last value in its phase field

    @property
    def counts(self) -> bool:
        """Counted in bucket sums (a B2500 that says participate=0 is not)."""
        return self.participate is not False

    def ttl(self, floor: float) -> float:
        return UNKNOWN_INTERVAL_TTL if self.interval is None else max(floor, 2.0 * self.interval)

    def as_dict(self) -> dict[str, Any]:
        return {"mac": self.mac, "ip": self.ip, "type": self.battery_type, "phase": self.phase or None,
                "power": self.power, "participate": self.participate, "served": self.served,
                "polls": self.polls, "answers": self.answers,
                "interval": None if self.interval is None else round(self.interval, 2)}


class SlotTable:
    """Batteries by MAC, least recently seen first."""

    def __init__(self, clock: IClock, size: int = 9, floor: float = 5.0,
                 on_evict: Callable[[str], None] | None = None) -> None:
        self.clock, self.size, self.floor = clock, size, floor
        self.on_evict = on_evict or (lambda mac: None)
        self.slots: OrderedDict[str, Slot] = OrderedDict()
        self.refused = 0  # polls refused because every slot was taken
        self.evicted = 0

    def expire(self) -> list[str]:
        now = self.clock.seconds()
        gone = [mac for mac, slot in self.slots.items() if now - slot.last_seen > slot.ttl(self.floor)]
        for mac in gone:
            del self.slots[mac]
            self.on_evict(mac)
        self.evicted += len(gone)
        return gone

    def touch(self, mac: str, ip: str, port: int, battery_type: str) -> Slot | None:
        """The battery's slot (made if there is room), its poll counted; None: no slot free."""
        now = self.clock.seconds()
        slot = self.slots.get(mac)
        if slot is None:
            if len(self.slots) >= self.size:
                self.expire()
            if len(self.slots) >= self.size:
                self.refused += 1
                return None
            slot = self.slots[mac] = Slot(mac, ip, port, battery_type, now, now)
        else:
            gap = now - slot.last_seen
            slot.interval = gap if slot.interval is None else 0.8 * slot.interval + 0.2 * gap
            self.slots.move_to_end(mac)
        slot.ip, slot.port, slot.battery_type, slot.last_seen = ip, port, battery_type, now
        slot.polls += 1
        return slot

    def active(self) -> list[Slot]:
        """Current slots, in MAC order (the round robin's order)."""
        self.expire()
        return [self.slots[mac] for mac in sorted(self.slots)]
