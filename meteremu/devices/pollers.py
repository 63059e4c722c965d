"""Who polls a non-RPC face (EcoTracker): the ``clients`` part of a :class:`~meteremu.devices.base.Face`.

The dashboard and ``/metrics`` show every device's clients; a face without
Shelly's RPC has one kind of request, the poll, so every client that polled
twice within ``ttl`` is a battery. The table is bounded (spoofed sources
cannot grow it): the least recently seen client is forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from meteremu.meter import IClock


class PollerTracker:
    def __init__(self, clock: IClock, ttl: float = 30.0, max_clients: int = 256) -> None:
        self.clock = clock
        self.ttl = ttl
        self.max_clients = max_clients
        self._clients: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    def seen(self, ip: str | None, transport: str, what: str) -> None:
        if ip is None:
            return
        now = self.clock.seconds()
        key = (ip, transport)
        client = self._clients.pop(key, None)
        if client is None:
            client = {"ip": ip, "transport": transport, "first_seen": now, "requests": 0, "polls": []}
        client["last_seen"] = now
        client["requests"] += 1
        client["last_method"] = what
        client["polls"] = [t for t in client["polls"] if now - t <= self.ttl][-1:] + [now]
        self._clients[key] = client
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)

    def _battery(self, client: dict[str, Any], now: float) -> bool:
        return len([t for t in client["polls"] if now - t <= self.ttl]) >= 2

    def overview(self) -> list[dict[str, Any]]:
        now = self.clock.seconds()
        return [{k: v for k, v in c.items() if k != "polls"} | {"battery": self._battery(c, now)}
                for c in sorted(self._clients.values(), key=lambda c: (c["ip"], c["transport"]))]

    def active_batteries(self) -> list[str]:
        now = self.clock.seconds()
        return sorted({c["ip"] for c in self._clients.values() if self._battery(c, now)})
