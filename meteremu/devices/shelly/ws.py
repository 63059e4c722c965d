"""WebSocket RPC on ``/rpc`` (Autobahn, glued to Twisted in ``meteremu.compat.autobahn_server``).

Each text message is one request frame, answered in order (pipelining just
works: every message is answered synchronously from the RPC core). A client
that sends a frame with ``src`` subscribes to the device's notification hub
(``hub.py``), which pushes ``NotifyFullStatus`` and ``NotifyStatus`` through
:meth:`ShellyWebSocketProtocol.send`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from meteremu.compat.autobahn_server import (  # before any other autobahn import: txaio's framework
    ConnectionRequest,
    PreparedMessage,
    WebSocketResource,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from meteremu.compat.tcp import write_now
from meteremu.devices.shelly import jsonfmt
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.hub import NotifyHub
from meteremu.devices.shelly.notify import Status
from meteremu.devices.shelly.rpc import CallContext, RpcError, parse_frame
from meteremu.logs import logger

log = logger(__name__)

MAX_MESSAGE = 64 * 1024


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
        """Send one message, unless the client stopped reading: then drop it.

        A client that never reads would make us buffer every notification
        (and every pong) forever; past ``max_backlog`` unsent bytes it is cut
        off in ``sendData`` (it can reconnect, as Home Assistant does).
        """
        if self.transport is None or self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        # One unfragmented, uncompressed text frame, framed by Autobahn.
        frame = PreparedMessage(payload, False, False, True).payloadHybi
        if not write_now(self.transport, frame):
            self.sendData(frame)


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
