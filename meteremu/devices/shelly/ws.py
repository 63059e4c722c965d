"""WebSocket RPC on ``/rpc`` (Autobahn, glued to Twisted in ``wsserver``), with NotifyStatus push.

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

from twisted.internet import tcp
from twisted.internet.task import LoopingCall

from meteremu.devices.shelly import jsonfmt
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.notify import Status, diff_status, notification_bytes, params_json
from meteremu.devices.shelly.rpc import CallContext, RpcError, parse_frame
from meteremu.devices.shelly.wsserver import (  # before any other autobahn import: txaio's framework
    ConnectionRequest,
    PreparedMessage,
    WebSocketResource,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
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


def write_now(transport: Any, data: bytes) -> bool:
    """Send ``data`` on a plain TCP transport right away; False if it must be queued.

    Twisted queues every ``write`` until the reactor's next turn, and on the
    asyncio reactor each queued write costs an ``add_writer``/``remove_writer``
    pair (two epoll_ctl calls and a callback): in a fan-out to hundreds of
    clients the last one waits for all of them (measured: about 40 µs a
    client). When nothing is queued on the transport, a ``send()`` now is what
    the reactor would do on its next turn anyway; whatever the kernel does not
    take is queued with ``write`` behind it, so the byte order is kept. TLS
    transports, closing ones and ones with queued bytes take the normal path.
    """
    if (type(transport) is not tcp.Server or transport.TLS or transport.disconnecting
            or transport.connected != 1 or backlog(transport)):
        return False
    try:
        sent = transport.getHandle().send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        return False  # let the transport meet the error and close as it does
    if sent < len(data):
        transport.write(data[sent:])
    return True


class ShellyWebSocketProtocol(WebSocketServerProtocol):
    factory: ShellyWebSocketFactory

    def onConnect(self, request: ConnectionRequest) -> None:
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.ctx = CallContext("ws", getattr(peer, "host", None), None, getattr(host, "host", None),
                               request.headers.get("user-agent"))
        self.src: str | None = None
        self.known: Status = {}  # what this client was last told; shared, never modified in place
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
        # One unfragmented, uncompressed text frame, framed by Autobahn.
        frame = PreparedMessage(payload, False, False, True).payloadHybi
        if not write_now(self.transport, frame):
            self.sendData(frame)


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
        client.known = dev.meter_components(client.ctx)
        self._send(client, "NotifyFullStatus", params_json(self.clock.seconds(), status))

    def _send(self, client: ShellyWebSocketProtocol, method: str, params: str) -> None:
        """Send ``params`` (JSON text, see :func:`params_json`) to ``client``."""
        client.send(notification_bytes(self.device.identity.device_id, client.src or "", method, params))
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

    def _heartbeat(self, client: ShellyWebSocketProtocol) -> None:
        """The whole meter components, even unchanged: clients see we are alive."""
        dev = self.device
        try:
            current = dev.meter_components(client.ctx)
            client.known = current
            self._send(client, "NotifyStatus", params_json(self.clock.seconds(), current))
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
        now = self._last_flush = self.clock.seconds()
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
                    outcome = (client.known, diff, known, params_json(now, diff) if diff else None)
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
