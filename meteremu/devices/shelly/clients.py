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

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from meteremu.devices.shelly.options import ScalingOptions
from meteremu.devices.shelly.rpc import CallContext, RpcError
from meteremu.meter import IClock

# A gen1 client's poll is a GET of /status or /emeter/<n> (devices/shelly/gen1.py).
POLL_METHODS = frozenset({"EM.GetStatus", "EM1.GetStatus", "/status", "/emeter"})
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
    clients: int = 0  # entries in ClientTracker.clients with this IP


class ClientTracker:
    """Clients of one device, and the scaling and throttling they get.

    Every poll costs the same however many clients there are (a LAN
    attacker can spoof thousands of UDP sources): clients are kept least
    recently seen first, so forgetting the oldest is O(1), and the batteries
    are kept in the order of their last poll, so counting the active ones only
    drops those past ``ttl`` from the front. At most ``scaling.max_batteries``
    IPs count as batteries at a time; a battery that keeps polling keeps its
    place, so spoofed pollers cannot push the real batteries' share to nothing
    (what UDP on a LAN can and cannot prove: docs/configuration.md).
    """

    def __init__(self, clock: IClock, scaling: ScalingOptions | None = None, max_clients: int = 1024) -> None:
        self.clock = clock
        self.scaling = scaling or ScalingOptions()
        self.max_clients = max_clients
        self.clients: OrderedDict[tuple[str, str], Client] = OrderedDict()  # least recently seen first
        self._ips: dict[str, _IpState] = {}
        self._batteries: OrderedDict[str, float] = OrderedDict()  # ip -> last poll, oldest first
        self.refused_batteries = 0  # polls from would-be batteries past max_batteries

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
            state = self._ips.get(ctx.peer)
            if state is None:
                state = self._ips[ctx.peer] = _IpState()
            state.clients += 1
        else:
            self.clients.move_to_end(key)
            state = self._ips[ctx.peer]
        client.last_seen = now
        client.requests += 1
        client.last_method = method
        if ctx.user_agent and ctx.user_agent.startswith("Mozilla/"):
            state.browser = True
            self._batteries.pop(ctx.peer, None)
        if method in POLL_METHODS:
            gap = self.scaling.min_interval
            if gap > 0 and client.last_answered_poll is not None and now - client.last_answered_poll < gap:
                raise RpcError(THROTTLED, f"Too many requests: at most one poll per {gap:g} s")
            client.last_answered_poll = now
            state.polls.append(now)
            self._polled(ctx.peer, state, now)

    def _polled(self, ip: str, state: _IpState, now: float) -> None:
        """Keep the battery set: two polls within ``ttl`` make a battery (browsers never)."""
        if state.browser or len(state.polls) < 2 or state.polls[1] - state.polls[0] > self.scaling.ttl:
            return
        if ip in self._batteries:
            self._batteries[ip] = now
            self._batteries.move_to_end(ip)
            return
        self._expire(now)
        if len(self._batteries) >= self.scaling.max_batteries:
            self.refused_batteries += 1
            return
        self._batteries[ip] = now

    def _expire(self, now: float) -> None:
        ttl = self.scaling.ttl
        batteries = self._batteries
        while batteries:
            ip, last = next(iter(batteries.items()))
            if now - last <= ttl:
                break
            batteries.popitem(last=False)

    def _forget_oldest(self) -> None:
        """Forget the least recently seen client that is not a counted battery.

        Batteries are at most ``max_batteries``, so this looks at a few entries
        at most: a flood of forged sources cannot push a real battery out.
        """
        key = next((k for k in self.clients if k[1] not in self._batteries), None)
        if key is None:
            key = next(iter(self.clients))
        del self.clients[key]
        ip = key[1]
        state = self._ips.get(ip)
        if state is not None:
            state.clients -= 1
            if state.clients <= 0:
                del self._ips[ip]
                self._batteries.pop(ip, None)

    def is_battery(self, ip: str) -> bool:
        self._expire(self.clock.seconds())
        return ip in self._batteries

    def battery_count(self) -> int:
        self._expire(self.clock.seconds())
        return len(self._batteries)

    def active_batteries(self) -> list[str]:
        self._expire(self.clock.seconds())
        return sorted(self._batteries)

    # -- scaling ---------------------------------------------------------
    def scale_for(self, ctx: CallContext) -> float:
        """The factor for power and current served to this caller."""
        mode = self.scaling.mode
        if mode == "none" or ctx.peer is None or not self.is_battery(ctx.peer):
            return 1.0
        if mode == "divide":
            return 1.0 / max(1, len(self._batteries))
        return self.scaling.weights.get(ctx.peer, self.scaling.default_weight)

    # -- views -----------------------------------------------------------
    def overview(self) -> list[dict[str, Any]]:
        return [c.as_dict(self.is_battery(c.ip))
                for c in sorted(self.clients.values(), key=lambda c: (c.ip, c.transport))]
