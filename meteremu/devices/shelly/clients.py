"""Who polls the device: a tracker per device, and request-side scaling.

Pure (clock injected). Every RPC call passes :meth:`ClientTracker.observe`,
keyed by transport and IP, so ``/admin/overview`` and ``/metrics`` can show
which batteries are polling, and scaling can count them.

A client is a *battery* once it has polled ``EM.GetStatus``/``EM1.GetStatus``
twice within ``ttl`` on any transport. Home Assistant (which polls
``Shelly.GetStatus``) and browsers (``Mozilla/`` user agents) never are.
Battery status is per IP: a battery that moves from broadcast discovery to
unicast, or polls two ports, is still one battery.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from meteremu.devices.shelly.options import ScalingOptions
from meteremu.devices.shelly.rpc import CallContext, RpcError
from meteremu.meter import IClock

POLL_METHODS = frozenset({"EM.GetStatus", "EM1.GetStatus"})
THROTTLED = -108  # RESOURCE_EXHAUSTED in the firmware's gRPC-derived numbering


@dataclass
class Client:
    ip: str
    transport: str
    first_seen: float
    last_seen: float
    requests: int = 0
    last_method: str | None = None
    last_answered_poll: float | None = None

    def as_dict(self, battery: bool) -> dict[str, Any]:
        return {"ip": self.ip, "transport": self.transport, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "requests": self.requests,
                "last_method": self.last_method, "battery": battery}


@dataclass
class _IpState:
    polls: deque[float] = field(default_factory=lambda: deque(maxlen=2))
    browser: bool = False


class ClientTracker:
    """Clients of one device, and the scaling and throttling they get."""

    def __init__(self, clock: IClock, scaling: ScalingOptions | None = None, max_clients: int = 1024) -> None:
        self.clock = clock
        self.scaling = scaling or ScalingOptions()
        self.max_clients = max_clients
        self.clients: dict[tuple[str, str], Client] = {}
        self._ips: dict[str, _IpState] = {}

    # -- bookkeeping -----------------------------------------------------
    def observe(self, method: str, ctx: CallContext) -> None:
        """Record one call of ``method`` (its canonical name, as RpcCore reports it).

        Raises RpcError(THROTTLED) for a poll inside min_interval.
        """
        if ctx.peer is None:
            return
        now = self.clock.seconds()
        key = (ctx.transport, ctx.peer)
        client = self.clients.get(key)
        if client is None:
            if len(self.clients) >= self.max_clients:
                self._forget_oldest()
            client = self.clients[key] = Client(ctx.peer, ctx.transport, now, now)
        client.last_seen = now
        client.requests += 1
        client.last_method = method
        state = self._ips.get(ctx.peer)
        if state is None:
            state = self._ips[ctx.peer] = _IpState()
        if ctx.user_agent and ctx.user_agent.startswith("Mozilla/"):
            state.browser = True
        if method in POLL_METHODS:
            gap = self.scaling.min_interval
            if gap > 0 and client.last_answered_poll is not None and now - client.last_answered_poll < gap:
                raise RpcError(THROTTLED, f"Too many requests: at most one poll per {gap:g} s")
            client.last_answered_poll = now
            state.polls.append(now)

    def _forget_oldest(self) -> None:
        oldest = min(self.clients, key=lambda k: self.clients[k].last_seen)
        del self.clients[oldest]
        if not any(c.ip == oldest[1] for c in self.clients.values()):
            self._ips.pop(oldest[1], None)

    def is_battery(self, ip: str) -> bool:
        state = self._ips.get(ip)
        if state is None or state.browser or len(state.polls) < 2:
            return False
        now = self.clock.seconds()
        first, last = state.polls
        return last - first <= self.scaling.ttl and now - last <= self.scaling.ttl

    def active_batteries(self) -> list[str]:
        return sorted(ip for ip in self._ips if self.is_battery(ip))

    # -- scaling ---------------------------------------------------------
    def scale_for(self, ctx: CallContext) -> float:
        """The factor for power and current served to this caller."""
        mode = self.scaling.mode
        if mode == "none" or ctx.peer is None or not self.is_battery(ctx.peer):
            return 1.0
        if mode == "divide":
            return 1.0 / max(1, len(self.active_batteries()))
        return self.scaling.weights.get(ctx.peer, self.scaling.default_weight)

    # -- views -----------------------------------------------------------
    def overview(self) -> list[dict[str, Any]]:
        return [c.as_dict(self.is_battery(c.ip))
                for c in sorted(self.clients.values(), key=lambda c: (c.ip, c.transport))]
