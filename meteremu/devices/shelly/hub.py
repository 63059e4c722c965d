"""The notification hub of one device: who subscribed, and the throttled push to them.

A client that sent a frame with ``src`` gets ``NotifyFullStatus`` once, then
``NotifyStatus`` with only what changed (``notify.py``, pure), at most every
``notify_interval``; a freshness change (a meter going stale) is pushed
without a new reading, and every client hears from the device at least every
:data:`HEARTBEAT` seconds. The hub knows subscribers only as
:class:`Subscriber` (the WebSocket protocol is one), so it does not depend on
a transport.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.task import LoopingCall

from meteremu.clocks import wall
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.notify import Status, diff_status, notification_bytes, params_json
from meteremu.devices.shelly.rpc import CallContext
from meteremu.interfaces import IReactorTime
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.reading import Reading

log = logger(__name__)

HEARTBEAT = 60.0  # spec §2.4: notify at least this often, even when nothing changed


class Subscriber(Protocol):
    """A client the hub pushes to: what it was told, and how to reach it."""

    ctx: CallContext
    src: str | None
    known: Status  # what this client was last told; shared, never modified in place
    last_notified: float

    def send(self, payload: bytes) -> None: ...


class NotifyHub:
    """Subscribed clients of one device, and the throttled push to them."""

    def __init__(self, device: ShellyDevice, clock: IReactorTime, interval: float, epsilon: float) -> None:
        self.device, self.clock = device, clock
        self.interval, self.epsilon = interval, epsilon
        self.clients: list[Subscriber] = []
        self._pending: Any = None
        self._watch: LoopingCall | None = None
        self._last_flush = float("-inf")
        self._last_state = device.meter.freshness()
        self.sent = 0

    def start(self) -> None:
        self.device.meter.add_listener(self._on_reading)

    def stop(self) -> None:
        self.device.meter.remove_listener(self._on_reading)
        self._stop_watch()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    def _tick(self) -> None:
        """Push freshness changes (error conditions) and a periodic heartbeat."""
        state = self.device.meter.freshness()
        changed, self._last_state = state != self._last_state, state
        if not self.clients:
            return
        now = self.clock.seconds()
        if changed:
            self._schedule()
        for client in list(self.clients):
            if now - client.last_notified >= HEARTBEAT:
                self._heartbeat(client)

    def subscribe(self, client: Subscriber) -> None:
        self.clients.append(client)
        self._send_full(client)
        if self._watch is None:
            # Nothing arrives when a meter goes stale or down: while anyone
            # listens, the hub looks by itself (and sends heartbeats).
            self._last_state = self.device.meter.freshness()
            self._watch = LoopingCall(self._tick)
            self._watch.clock = self.clock
            self._watch.start(self.interval, now=False)

    def unsubscribe(self, client: Subscriber) -> None:
        if client in self.clients:
            self.clients.remove(client)
        if not self.clients:
            self._stop_watch()

    def _stop_watch(self) -> None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self._watch = None

    def _send_full(self, client: Subscriber) -> None:
        dev = self.device
        status = dev.full_status(client.ctx)
        client.known = dev.meter_components(client.ctx)
        self._send(client, "NotifyFullStatus", params_json(wall(self.clock), status))

    def _send(self, client: Subscriber, method: str, params: str) -> None:
        """Send ``params`` (JSON text, see :func:`params_json`) to ``client``."""
        client.send(notification_bytes(self.device.identity_for(client.ctx.peer).device_id, client.src or "", method, params))
        client.last_notified = self.clock.seconds()
        self.sent += 1

    def _on_reading(self, meter: Meter, reading: Reading) -> None:
        if self.clients:
            self._schedule()

    def _schedule(self) -> None:
        if self._pending is not None and self._pending.active():
            return
        delay = max(0.0, self._last_flush + self.interval - self.clock.seconds())
        self._pending = self.clock.callLater(delay, self.flush)

    def _heartbeat(self, client: Subscriber) -> None:
        """The whole meter components, even unchanged: clients see we are alive."""
        dev = self.device
        try:
            current = dev.meter_components(client.ctx)
            client.known = current
            self._send(client, "NotifyStatus", params_json(wall(self.clock), current))
        except Exception:
            log.failure("heartbeat to {peer} failed", peer=client.ctx.peer)

    def flush(self) -> None:
        """Send each subscriber what changed for it (values are per client: scaling).

        Clients told the same so far, at the same scale, get the same
        notification: the components are built once per distinct scale, and
        the diff and its JSON once per distinct (scale, known state); only the
        frame around it (``dst``) is per client. Clients whose states end up
        equal share one state object from then on, so with 200 clients and
        one scale a flush diffs and encodes once.
        """
        if self._pending is not None and self._pending.active():
            self._pending.cancel()  # flushed early (tests, heartbeats): no second flush
        self._pending = None
        self._last_flush = self.clock.seconds()
        stamp = wall(self.clock)  # the notifications' ts
        dev = self.device
        components: dict[float, Status] = {}
        # (scale, id(known)) -> (known, diff or None, new known, params JSON or None)
        outcomes: dict[tuple[float, int], tuple[Status, Status | None, Status, str | None]] = {}
        states: dict[float, list[Status]] = {}  # new known states of this flush, per scale
        for client in list(self.clients):
            try:
                scale = dev.scale_for(client.ctx)
                outcome = outcomes.get((scale, id(client.known)))
                if outcome is None or outcome[0] is not client.known:
                    current = components.get(scale)
                    if current is None:
                        current = components[scale] = dev.components_at(scale)
                    diff, known = diff_status(client.known, current, self.epsilon)
                    if diff is not None:
                        known = _shared(states.setdefault(scale, []), known)
                    outcome = (client.known, diff, known, params_json(stamp, diff) if diff else None)
                    outcomes[(scale, id(client.known))] = outcome
                _, diff, known, params = outcome
                if diff is None:
                    self._send_full(client)
                    continue
                client.known = known  # equal content, possibly a shared object now
                if params is not None:
                    self._send(client, "NotifyStatus", params)
            except Exception:
                log.failure("notifying {peer} failed", peer=client.ctx.peer)


def _shared(states: list[Status], state: Status, look_back: int = 8) -> Status:
    """An equal state already made in this flush, else ``state`` (now remembered).

    Clients that subscribed at different moments hold different states until
    every field has moved once; from then on they are equal and share one
    object. Only the last few states are compared, so a flush stays linear.
    """
    for other in states[-look_back:]:
        if other == state:
            return other
    states.append(state)
    return state


