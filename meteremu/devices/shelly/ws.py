"""WebSocket RPC on ``/rpc`` (Autobahn), with NotifyStatus push.

Each text message is one request frame, answered in order (pipelining just
works: every message is answered synchronously from the RPC core). A client
that sends a frame with ``src`` subscribes: it gets ``NotifyFullStatus`` once,
then ``NotifyStatus`` with only what changed, at most every
``notify_interval`` and only for values that moved more than
``notify_epsilon`` (the diffing is pure, in ``notify.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.task import LoopingCall

from meteremu.devices.shelly import jsonfmt
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.notify import notification, status_diff
from meteremu.devices.shelly.rpc import CallContext, RpcError, parse_frame
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.reading import Reading

log = logger(__name__)

MAX_MESSAGE = 64 * 1024
MAX_BACKLOG = 512 * 1024  # unsent bytes before a non-reading client is dropped
HEARTBEAT = 60.0  # spec §2.4: notify at least this often, even when nothing changed


def backlog(transport: Any) -> int:
    """Bytes written to a Twisted TCP transport and not yet sent."""
    data = getattr(transport, "dataBuffer", b"")
    offset = getattr(transport, "offset", 0)
    return max(0, len(data) - offset) + getattr(transport, "_tempDataLen", 0)


class ShellyWebSocketProtocol(WebSocketServerProtocol):
    factory: ShellyWebSocketFactory

    def onConnect(self, request: ConnectionRequest) -> None:
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.ctx = CallContext("ws", getattr(peer, "host", None), None, getattr(host, "host", None),
                               request.headers.get("user-agent"))
        self.src: str | None = None
        self.known: dict[str, dict[str, Any]] = {}
        self.last_notified = float("-inf")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        started = time.perf_counter()
        core = self.factory.device.core
        try:
            if isBinary:
                raise RpcError(-103, "Binary frames are not supported: send JSON text")
            frame = parse_frame(payload)
        except RpcError as err:
            self.send(jsonfmt.dumpb({"id": None, "src": core.device_id, "error": err.as_dict()}))
            return
        response = core.handle_frame(frame, self.ctx)
        if response is not None:
            self.send(jsonfmt.dumpb(response))
        self.factory.observe_latency("ws", time.perf_counter() - started)
        src = frame.get("src") if isinstance(frame, dict) else None
        if self.src is None and isinstance(src, str) and src:
            self.src = src
            self.ctx = CallContext("ws", self.ctx.peer, src, self.ctx.local_ip, self.ctx.user_agent)
            self.factory.hub.subscribe(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.hub.unsubscribe(self)

    def notify(self, frame: dict[str, Any]) -> None:
        self.send(jsonfmt.dumpb(frame))

    def send(self, payload: bytes) -> None:
        """Send, unless the client stopped reading: then drop it.

        A client that never reads would make us buffer every notification
        forever; past MAX_BACKLOG of unsent bytes it is cut off (it can
        reconnect, as Home Assistant does).
        """
        if self.transport is None or self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        if backlog(self.transport) > MAX_BACKLOG:
            log.warn("dropping WebSocket client {peer}: it stopped reading ({n} bytes unsent)",
                     peer=self.ctx.peer, n=backlog(self.transport))
            self.factory.hub.unsubscribe(self)
            self.transport.abortConnection()
            return
        self.sendMessage(payload)


class NotifyHub:
    """Subscribed clients of one device, and the throttled push to them."""

    def __init__(self, device: ShellyDevice, clock: Any, interval: float, epsilon: float) -> None:
        self.device, self.clock = device, clock
        self.interval, self.epsilon = interval, epsilon
        self.clients: list[ShellyWebSocketProtocol] = []
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

    def subscribe(self, client: ShellyWebSocketProtocol) -> None:
        self.clients.append(client)
        self._send_full(client)
        if self._watch is None:
            # Nothing arrives when a meter goes stale or down: while anyone
            # listens, the hub looks by itself (and sends heartbeats).
            self._last_state = self.device.meter.freshness()
            self._watch = LoopingCall(self._tick)
            self._watch.clock = self.clock
            self._watch.start(self.interval, now=False)

    def unsubscribe(self, client: ShellyWebSocketProtocol) -> None:
        if client in self.clients:
            self.clients.remove(client)
        if not self.clients:
            self._stop_watch()

    def _stop_watch(self) -> None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self._watch = None

    def _send_full(self, client: ShellyWebSocketProtocol) -> None:
        dev = self.device
        status = dev.full_status(client.ctx)
        client.known = {k: dict(v) for k, v in dev.meter_components(client.ctx).items()}
        self._send(client, "NotifyFullStatus", status)

    def _send(self, client: ShellyWebSocketProtocol, method: str, params: dict[str, Any]) -> None:
        now = self.clock.seconds()
        client.notify(notification(self.device.identity.device_id, client.src or "", method, now, params))
        client.last_notified = now
        self.sent += 1

    def _on_reading(self, meter: Meter, reading: Reading) -> None:
        if self.clients:
            self._schedule()

    def _schedule(self) -> None:
        if self._pending is not None and self._pending.active():
            return
        delay = max(0.0, self._last_flush + self.interval - self.clock.seconds())
        self._pending = self.clock.callLater(delay, self.flush)

    def _heartbeat(self, client: ShellyWebSocketProtocol) -> None:
        """The whole meter components, even unchanged: clients see we are alive."""
        dev = self.device
        try:
            current = dev.meter_components(client.ctx)
            client.known = {k: dict(v) for k, v in current.items()}
            self._send(client, "NotifyStatus", current)
        except Exception:
            log.failure("heartbeat to {peer} failed", peer=client.ctx.peer)

    def flush(self) -> None:
        """Send each subscriber what changed for it (values are per client: scaling)."""
        if self._pending is not None and self._pending.active():
            self._pending.cancel()  # flushed early (tests, heartbeats): no second flush
        self._pending = None
        self._last_flush = self.clock.seconds()
        dev = self.device
        for client in list(self.clients):
            try:
                diff = status_diff(client.known, dev.meter_components(client.ctx), self.epsilon)
                if diff is None:
                    self._send_full(client)
                elif diff:
                    self._send(client, "NotifyStatus", diff)
            except Exception:
                log.failure("notifying {peer} failed", peer=client.ctx.peer)


class ShellyWebSocketFactory(WebSocketServerFactory):
    protocol = ShellyWebSocketProtocol

    def __init__(self, device: ShellyDevice, hub: NotifyHub,
                 observe_latency: Callable[[str, float], None] | None = None) -> None:
        super().__init__()
        self.device, self.hub = device, hub
        self.observe_latency = observe_latency or (lambda transport, seconds: None)
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE, maxMessagePayloadSize=MAX_MESSAGE,
            autoPingInterval=60, autoPingTimeout=30, openHandshakeTimeout=10, closeHandshakeTimeout=5,
        )


def websocket_resource(factory: ShellyWebSocketFactory) -> WebSocketResource:
    return WebSocketResource(factory)
