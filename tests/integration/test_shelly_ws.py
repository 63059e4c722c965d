"""WebSocket RPC on /rpc and NotifyStatus push (spec §2.3, §2.4, §6.1; checks 21-24).

Three layers:

- ``NotifyHubTests``: the hub alone, on a ``task.Clock`` with fake subscribers,
  so throttling, epsilon and the stale/recovery transitions are deterministic.
- ``WebSocketTests``: a real meteremu on port 0 and an Autobahn client.
- ``AioshellyTests``: aioshelly connecting as Home Assistant does.

Readings are pushed by hand (the simulator runs with ``interval: 1h`` and so
samples once at start); nothing waits on a fixed sleep: every wait is a
Deferred fired by a callback, with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.trial.unittest import TestCase

from meteremu.asyncbridge import as_deferred
from meteremu.devices.shelly import ws as shelly_ws
from tests.support import (
    HTTPClient,
    asyncio_reactor_skip,
    sample_reading,
    start_app,
    test_config,
)
from tests.support.shared.shelly_ws import differs, merged

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h", "start_time": "12:00", "seed": 3}}}


WAIT = 5.0  # bound for any single network round trip on 127.0.0.1


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerConnections:
    """Sees the server side of each WebSocket close (so cleanup can wait for it).

    Patches the device factory's protocol with a subclass that only records
    connectionMade/connectionLost around the real implementation.
    """

    def __init__(self, case: TestCase) -> None:
        self.live: set[Any] = set()
        self.seen: list[Any] = []
        self._waiters: list[Deferred[None]] = []
        tracker = self

        class Tracked(shelly_ws.ShellyWebSocketProtocol):
            def connectionMade(self) -> None:
                tracker.live.add(self)
                tracker.seen.append(self)
                super().connectionMade()

            def connectionLost(self, reason: Any) -> None:
                try:
                    super().connectionLost(reason)
                finally:
                    tracker.live.discard(self)
                    tracker._check()

        case.patch(shelly_ws.ShellyWebSocketFactory, "protocol", Tracked)

    def _check(self) -> None:
        if not self.live:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def all_closed(self, timeout: float = WAIT) -> Deferred[None]:
        if not self.live:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d.addTimeout(timeout, reactor)


class RpcClient(WebSocketClientProtocol):
    """Collects every frame; ``wait_for`` a frame matching a predicate."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Any] = []
        self.raw: list[bytes] = []
        self.pongs: list[bytes] = []
        self.close_info: tuple[bool, int | None, str | None] | None = None
        self.closed: Deferred[bool] = Deferred()
        self._waiters: list[tuple[Callable[[Any], bool], Deferred[Any]]] = []
        self._pong_waiters: list[Deferred[bytes]] = []
        self._ids = 0

    # -- Autobahn callbacks --------------------------------------------
    def onOpen(self) -> None:
        opened, self.factory.opened = self.factory.opened, None
        if opened is not None:
            opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.raw.append(payload)
        frame = json.loads(payload.decode("utf-8"))
        self.frames.append(frame)
        for entry in list(self._waiters):
            predicate, d = entry
            if predicate(frame):
                self._waiters.remove(entry)
                d.callback(frame)

    def onPong(self, payload: bytes) -> None:
        self.pongs.append(payload)
        waiters, self._pong_waiters = self._pong_waiters, []
        for d in waiters:
            d.callback(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_info = (wasClean, code, reason)
        opened, self.factory.opened = self.factory.opened, None
        if opened is not None:
            opened.errback(ConnectionError(f"WebSocket not opened: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback(wasClean)

    # -- helpers ---------------------------------------------------------
    def wait_for(self, predicate: Callable[[Any], bool], start: int | None = None,
                 timeout: float = WAIT) -> Deferred[Any]:
        """The first frame from index ``start`` on (default: any) that matches."""
        for frame in self.frames[start or 0:]:
            if predicate(frame):
                return succeed(frame)
        entry: list[Any] = []
        d: Deferred[Any] = Deferred(lambda d: self._waiters.remove(entry[0]))
        entry.append((predicate, d))
        self._waiters.append(entry[0])
        return d.addTimeout(timeout, reactor)

    def send(self, method: str, params: Any = None, src: str | None = None,
             frame_id: Any = None) -> Any:
        if frame_id is None:
            self._ids += 1
            frame_id = self._ids
        frame: dict[str, Any] = {"id": frame_id, "method": method}
        if src is not None:
            frame["src"] = src
        if params is not None:
            frame["params"] = params
        self.sendMessage(json.dumps(frame).encode("utf-8"))
        return frame_id

    def reply(self, frame_id: Any) -> Deferred[Any]:
        return self.wait_for(lambda f: isinstance(f, dict) and "method" not in f
                             and f.get("id") == frame_id and type(f.get("id")) is type(frame_id))

    def call(self, method: str, params: Any = None, src: str | None = None) -> Deferred[Any]:
        return self.reply(self.send(method, params, src))

    def ping(self, payload: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred(lambda d: self._pong_waiters.remove(d))
        self._pong_waiters.append(d)
        self.sendPing(payload)
        return d.addTimeout(WAIT, reactor)

    def notifications(self, method: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict) and "method" in f
                and (method is None or f["method"] == method)]


class WebSocketTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def start(self, **device: Any) -> Any:
        self.server = ServerConnections(self)
        config = test_config(self.mktemp(), meters=SIM, devices=[{"type": "shelly_pro_3em", **device}])
        self.app = yield start_app(self, config)
        self.clients: list[RpcClient] = []
        self.addCleanup(self.close_clients)  # runs before the app stops (LIFO)
        self.device = self.app.devices[0]
        self.hub = self.app.device_services[0].hub
        self.meter = self.app.meters["grid"]
        self.t = self.meter.latest.measured_at
        self.push((2166.2, 3.6, -244.0))  # known values instead of the simulator's

    def push(self, powers: tuple[float, float, float]) -> None:
        self.t += 1.0
        self.assertTrue(self.meter.update(sample_reading(self.t, powers)))

    def connect(self, port: int | None = None) -> Deferred[RpcClient]:
        port = self.app.http_port() if port is None else port
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/rpc")
        factory.protocol = RpcClient
        factory.opened = Deferred()
        opened = factory.opened
        reactor.connectTCP("127.0.0.1", port, factory, timeout=WAIT)

        def keep(client: RpcClient) -> RpcClient:
            self.clients.append(client)
            return client

        return opened.addTimeout(WAIT, reactor).addCallback(keep)

    @inlineCallbacks
    def close_clients(self) -> Any:
        for client in self.clients:
            if not client.closed.called:
                client.sendClose(1000)
                try:
                    yield client.closed.addTimeout(WAIT, reactor)
                except Exception:
                    client.transport.abortConnection()
        yield self.server.all_closed()

    # -- check 21 ------------------------------------------------------------
    @inlineCallbacks
    def test_pipelined_requests_are_all_answered_by_id(self) -> None:
        yield self.start()
        client = yield self.connect()
        ids = [
            client.send("Shelly.GetConfig"),
            client.send("Shelly.GetStatus", frame_id="status-1"),
            client.send("Shelly.GetComponents", {"dynamic_only": True}),
            client.send("EM.GetStatus", {"id": 0}, frame_id=7),
        ]
        config, status, components, em = yield gatherResults([client.reply(i) for i in ids])
        self.assertEqual(len(client.frames), 4)
        self.assertEqual(status["id"], "status-1")
        self.assertEqual(em["id"], 7)
        for reply in (config, status, components, em):
            self.assertEqual(reply["src"], self.device.identity.device_id)
            self.assertNotIn("dst", reply)  # no src was sent
            self.assertNotIn("error", reply)
        self.assertIn("sys", config["result"])
        self.assertIn("em:0", config["result"])
        self.assertEqual(status["result"]["em:0"], em["result"])
        self.assertIsInstance(components["result"]["components"], list)
        self.assertLessEqual(len(components["result"]["components"]), components["result"]["total"])
        self.assertIn("a_act_power", em["result"])

    # -- check 22 ------------------------------------------------------------
    @inlineCallbacks
    def test_no_notification_before_a_frame_with_src(self) -> None:
        yield self.start()
        client = yield self.connect()
        yield client.call("EM.GetStatus", {"id": 0})
        yield client.call("EM.GetStatus", {"id": 0}, src="")  # empty src: not valid
        client.sendMessage(b'{"id":"n","src":5,"method":"Sys.GetStatus"}')  # not a string
        yield client.reply("n")
        self.assertEqual(self.hub.clients, [])
        self.push((1500.0, 3.6, -244.0))
        self.push((1600.0, 30.0, -244.0))
        self.hub.flush()  # the throttle, driven directly
        # Barrier: any notification sent before this reply arrives before it.
        yield client.call("Sys.GetStatus")
        self.assertEqual(client.notifications(), [])
        self.assertEqual(len(client.frames), 4)

    @inlineCallbacks
    def test_full_status_then_changes_after_src(self) -> None:
        yield self.start()
        client = yield self.connect()
        src = "tester-1"
        reply = yield client.call("Shelly.GetDeviceInfo", src=src)
        self.assertEqual(reply["dst"], src)
        full = yield client.wait_for(lambda f: f.get("method") == "NotifyFullStatus")
        # More frames with src (even another one) do not resubscribe.
        yield client.call("EM.GetStatus", {"id": 0}, src=src)
        yield client.call("EM.GetStatus", {"id": 0}, src="someone-else")
        self.assertEqual(client.notifications(), [full])
        self.assertEqual(len(self.hub.clients), 1)

        self.assertEqual(full["src"], self.device.identity.device_id)
        self.assertEqual(full["dst"], src)
        params = full["params"]
        self.assertIsInstance(params["ts"], float)
        self.assertIn("sys", params)
        self.assertIn("emdata:0", params)
        raw = client.raw[client.frames.index(full)].decode()
        self.assertRegex(raw, r'"params":\{"ts":\d+\.\d{2}[,}]')
        fresh = (yield client.call("Shelly.GetStatus", src=src))["result"]
        self.assertEqual(params["em:0"], fresh["em:0"])

        mark = len(client.frames)
        self.push((1234.5, 3.6, -244.0))  # phase a only
        note = yield client.wait_for(lambda f: f.get("method") == "NotifyStatus", start=mark, timeout=3.0)
        fresh = (yield client.call("Shelly.GetStatus", src=src))["result"]
        self.assertEqual(note["src"], self.device.identity.device_id)
        self.assertEqual(note["dst"], src)
        self.assertIsInstance(note["params"]["ts"], float)
        self.assertGreaterEqual(note["params"]["ts"], params["ts"])
        em = note["params"]["em:0"]
        changed = {k for k, v in fresh["em:0"].items() if differs(params["em:0"][k], v, 0.1)}
        self.assertEqual(set(em), changed | {"id"})
        self.assertEqual(em["id"], 0)
        self.assertEqual(em["a_act_power"], 1234.5)
        for unchanged in ("a_voltage", "b_act_power", "c_act_power", "a_freq", "user_calibrated_phase"):
            self.assertNotIn(unchanged, em)
        overlay = merged(params, note["params"])
        for component in ("em:0", "emdata:0"):
            for key, value in fresh[component].items():
                self.assertFalse(differs(overlay[component][key], value, 0.1), (component, key))
        self.assertEqual(len(client.notifications("NotifyFullStatus")), 1)

    # -- check 23 (part) ---------------------------------------------------
    @inlineCallbacks
    def test_ping_is_answered(self) -> None:
        yield self.start()
        client = yield self.connect()
        payload = yield client.ping(b"meteremu-ping")
        self.assertEqual(payload, b"meteremu-ping")
        reply = yield client.call("EM.GetStatus", {"id": 0})
        self.assertIn("result", reply)

    # -- close --------------------------------------------------------------
    @inlineCallbacks
    def test_clean_close_unsubscribes(self) -> None:
        yield self.start()
        client = yield self.connect()
        yield client.call("Shelly.GetDeviceInfo", src="closer")
        self.assertEqual(len(self.hub.clients), 1)
        client.sendClose(1000)
        clean = yield client.closed.addTimeout(WAIT, reactor)
        self.assertTrue(clean)
        self.assertEqual(client.close_info[1], 1000)
        yield self.server.all_closed()
        self.assertEqual(self.hub.clients, [])
        self.push((900.0, 3.6, -244.0))  # no subscriber left: nothing scheduled
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.func == self.hub.flush], [])

    @inlineCallbacks
    def test_dropped_connection_unsubscribes(self) -> None:
        yield self.start()
        client = yield self.connect()
        yield client.call("Shelly.GetDeviceInfo", src="dropper")
        self.assertEqual(len(self.hub.clients), 1)
        client.transport.abortConnection()
        yield client.closed.addTimeout(WAIT, reactor)
        yield self.server.all_closed()
        self.assertEqual(self.hub.clients, [])

    # -- bad frames ----------------------------------------------------------
    @inlineCallbacks
    def test_bad_frames_get_errors_and_the_connection_stays(self) -> None:
        yield self.start()
        client = yield self.connect()
        client.sendMessage(b"{not json")
        error = yield client.wait_for(lambda f: "error" in f)
        self.assertEqual(error["error"]["code"], -32700)
        self.assertIsNone(error["id"])
        self.assertEqual(error["src"], self.device.identity.device_id)
        reply = yield client.call("EM.GetStatus", {"id": 0})
        self.assertIn("result", reply)

        mark = len(client.frames)
        client.sendMessage(b'{"id":99,"method":"EM.GetStatus","params":{"id":0}}', isBinary=True)
        error = yield client.wait_for(lambda f: "error" in f, start=mark)
        self.assertNotIn("result", error)
        self.assertIsInstance(error["error"]["code"], int)

        mark = len(client.frames)
        client.sendMessage(b"[1, 2]")  # JSON, but not a frame
        error = yield client.wait_for(lambda f: "error" in f, start=mark)
        self.assertEqual(error["error"]["code"], -103)

        # A frame without id is a notification: no answer at all.
        mark = len(client.frames)
        client.sendMessage(b'{"method":"EM.GetStatus","params":{"id":0}}')
        yield client.call("Sys.GetStatus")
        self.assertEqual(len(client.frames), mark + 1)

        reply = yield client.call("EM.GetStatus", {"id": 0})
        self.assertIn("result", reply)
        self.assertFalse(client.closed.called)

    # -- websocket_ports ------------------------------------------------------
    @inlineCallbacks
    def test_extra_websocket_port(self) -> None:
        # websocket_ports: [0] cannot be told apart from the main port 0 (the
        # listeners are keyed by requested port), so use a real free port.
        extra = free_tcp_port()
        yield self.start(websocket_ports=[extra])
        self.assertIn(extra, self.app.http)
        self.assertEqual(self.app.http[extra].port, extra)
        self.assertNotEqual(self.app.http_port(), extra)
        client = yield self.connect(extra)
        reply = yield client.call("EM.GetStatus", {"id": 0}, src="extra-port")
        self.assertIn("a_act_power", reply["result"])
        yield client.wait_for(lambda f: f.get("method") == "NotifyFullStatus")
        self.assertEqual(len(self.hub.clients), 1)
        http = HTTPClient(self)
        response, body = yield http.get(f"http://127.0.0.1:{extra}/shelly")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["id"], self.device.identity.device_id)

    @inlineCallbacks
    def test_websocket_off(self) -> None:
        yield self.start(websocket=False)
        self.assertIsNone(self.app.device_services[0].hub)
        yield self.assertFailure(self.connect(), ConnectionError)
        self.assertEqual(self.server.seen, [])


class AioshellyTests(TestCase):
    timeout = 30
    skip = asyncio_reactor_skip()

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = ServerConnections(self)
        config = test_config(self.mktemp(), meters=SIM,
                             devices=[{"type": "shelly_pro_3em", "name": "Grid meter"}])
        self.app = yield start_app(self, config)
        self.meter = self.app.meters["grid"]

    @inlineCallbacks
    def test_home_assistant_setup_and_push_updates(self) -> Any:
        result = yield as_deferred(self._run_aioshelly(self.app.http_port()))
        # The emulator saw the client go away (no dirty reactor, no stale subscriber).
        yield self.server.all_closed()
        self.assertEqual(self.app.device_services[0].hub.clients, [])
        self.assertEqual(result["a_act_power"], 1234.5)
        self.assertTrue(result["src"].startswith("aios-"))

    async def _run_aioshelly(self, port: int) -> dict[str, Any]:
        import aiohttp
        from aioshelly.common import ConnectionOptions, get_info
        from aioshelly.const import DEVICES
        from aioshelly.rpc_device import RpcDevice, RpcUpdateType, WsServer

        identity = self.app.devices[0].identity
        target = 1234.5
        updated = asyncio.Event()
        updates: list[Any] = []

        def on_update(device: Any, update_type: Any) -> None:
            updates.append(update_type)
            if update_type is RpcUpdateType.STATUS and device.status["em:0"].get("a_act_power") == target:
                updated.set()

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            # Step 2 of §6.1: GET /shelly.
            info = await get_info(session, "127.0.0.1", port=port)
            self.assertEqual(info["gen"], 2)
            self.assertEqual(info["mac"], identity.mac)

            options = ConnectionOptions(ip_address="127.0.0.1", port=port, device_mac=identity.mac)
            device = await RpcDevice.create(session, WsServer(), options)
            device.subscribe_updates(on_update)  # before initialize, as HA's coordinator does
            try:
                async with asyncio.timeout(20):
                    await device.initialize()
                self.assertTrue(device.initialized)
                self.assertIsNone(device.last_error)
                self.assertEqual(device.gen, 2)
                self.assertEqual(device.model, "SPEM-003CEBEU")
                self.assertIn(device.model, DEVICES)
                self.assertTrue(device.firmware_supported, f"unsupported firmware {device.firmware_version}")
                self.assertEqual(device.hostname, identity.device_id)
                self.assertEqual(device.name, "Grid meter")
                self.assertFalse(device.requires_auth)
                self.assertIn("em:0", device.config)
                fresh = await device.call_rpc("EM.GetStatus", {"id": 0})
                self.assertEqual(device.status["em:0"], fresh)
                self.assertNotEqual(fresh["a_act_power"], target)
                self.assertIn("emdata:0", device.status)
                self.assertIn("sys", device.status)

                hub = self.app.device_services[0].hub
                self.assertEqual(len(hub.clients), 1)
                src = hub.clients[0].src

                # A new reading reaches device.status through NotifyStatus.
                t = self.meter.latest.measured_at + 1.0
                self.meter.update(sample_reading(t, (target, 3.6, -244.0)))
                try:
                    async with asyncio.timeout(WAIT):
                        await updated.wait()
                except TimeoutError:
                    self.fail(f"device.status['em:0'] not updated by a notification within {WAIT} s")
                self.assertEqual(device.status["em:0"]["a_act_power"], target)
                self.assertEqual(device.status["em:0"], await device.call_rpc("EM.GetStatus", {"id": 0}))
                self.assertIn(RpcUpdateType.STATUS, updates)
                self.assertTrue(device.connected)
                return {"a_act_power": device.status["em:0"]["a_act_power"], "src": src}
            finally:
                await device.shutdown()
