"""A fake Home Assistant: REST ``/api/…`` and the WebSocket API on ``/api/websocket``.

It speaks the protocol as specs/sources-sinks.md §1.2 documents it and as
core implements it (``websocket_api/{auth,connection,commands,messages}.py``):

* handshake without ids: ``auth_required`` → ``auth`` → ``auth_ok`` or
  ``auth_invalid`` followed by a close;
* command ids must strictly increase per connection (``id_reuse`` otherwise);
* ``ping``/``pong``; ``supported_features`` with ``coalesce_messages`` makes
  the server pack the messages of one reactor turn into a JSON array;
* ``subscribe_entities``: ``result`` first, then an ``a`` snapshot of the
  entities that exist, then ``c`` diffs built exactly like core's
  ``_state_diff`` (``lc`` when the state changed, else ``lu``; context as a
  string when it only has an id; ``-`` for removed attributes) and ``r`` for
  removed entities; ``batch()`` sends several entities in one event;
* ``get_states``, ``energy/get_prefs`` (``not_found`` "No prefs" when unset);
* REST ``GET /api/``, ``/api/states``, ``/api/states/<id>`` (404 when the
  entity does not exist) with ``Authorization: Bearer``.

Time comes from ``now`` (epoch seconds); states keep core's ISO-8601 strings.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.web.resource import Resource
from twisted.web.server import Site

HA_VERSION = "2025.6.1"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


class State:
    """What core's ``State`` holds, for one entity."""

    def __init__(self, entity_id: str, state: str, attributes: dict[str, Any], now: float) -> None:
        self.entity_id = entity_id
        self.state = state
        self.attributes = dict(attributes)
        self.last_changed = self.last_updated = self.last_reported = now
        self.context_id = uuid.uuid4().hex[:26].upper()

    def as_dict(self) -> dict[str, Any]:
        return {"entity_id": self.entity_id, "state": self.state, "attributes": dict(self.attributes),
                "last_changed": iso(self.last_changed), "last_reported": iso(self.last_reported),
                "last_updated": iso(self.last_updated),
                "context": {"id": self.context_id, "parent_id": None, "user_id": None}}

    def compressed(self) -> dict[str, Any]:
        """core ``compressed_state_dict_add``: ``lu`` only when it differs from ``lc``."""
        out: dict[str, Any] = {"s": self.state, "a": dict(self.attributes), "c": self.context_id,
                               "lc": self.last_changed}
        if self.last_updated != self.last_changed:
            out["lu"] = self.last_updated
        return out


def state_diff(old: dict[str, Any], new: State) -> dict[str, Any]:
    """core ``_state_diff`` between a snapshot of the old state and the new one."""
    plus: dict[str, Any] = {}
    diff: dict[str, Any] = {"+": plus}
    if old["state"] != new.state:
        plus["s"] = new.state
    if old["last_changed"] != new.last_changed:
        plus["lc"] = new.last_changed
    elif old["last_updated"] != new.last_updated:
        plus["lu"] = new.last_updated
    if old["context_id"] != new.context_id:
        plus["c"] = new.context_id
    for key, value in new.attributes.items():
        if old["attributes"].get(key) != value:
            plus.setdefault("a", {})[key] = value
    removed = sorted(set(old["attributes"]) - set(new.attributes))
    if removed:
        diff["-"] = {"a": removed}
    return diff


class HAServerProtocol(WebSocketServerProtocol):
    factory: HAServerFactory

    def onConnect(self, request: Any) -> None:
        self.fake = self.factory.fake
        self.authenticated = False
        self.last_id = 0
        self.coalesce = False
        self.subscriptions: dict[int, set[str]] = {}
        self.queue: list[dict[str, Any]] = []
        self.flush_call: Any = None
        self.received: list[dict[str, Any]] = []
        self.closed: Deferred[None] = Deferred()
        self.fake.connections.append(self)

    def onOpen(self) -> None:
        self.send({"type": "auth_required", "ha_version": HA_VERSION})

    # -- sending -------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        if not self.coalesce:
            self.sendMessage(json.dumps(message).encode())
            self.fake.sent_at.append(time.perf_counter())
            return
        self.queue.append(message)
        if self.flush_call is None:
            self.flush_call = reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self.flush_call = None
        queue, self.queue = self.queue, []
        if not queue or self.state != self.STATE_OPEN:
            return
        payload = queue[0] if len(queue) == 1 else queue
        self.sendMessage(json.dumps(payload).encode())
        self.fake.sent_at.append(time.perf_counter())

    def result(self, msg_id: int, result: Any = None) -> None:
        self.send({"id": msg_id, "type": "result", "success": True, "result": result})

    def error(self, msg_id: Any, code: str, message: str) -> None:
        self.send({"id": msg_id, "type": "result", "success": False,
                   "error": {"code": code, "message": message}})

    def event(self, msg_id: int, event: dict[str, Any]) -> None:
        self.send({"id": msg_id, "type": "event", "event": event})

    # -- receiving -----------------------------------------------------------
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            self.sendClose(1003)
            return
        self.received.append(message)
        self.fake.received.append(message)
        self.fake.notify(message)
        if not self.authenticated:
            self.auth(message)
            return
        if not isinstance(message, dict) or not isinstance(message.get("id"), int) \
                or not isinstance(message.get("type"), str):
            self.error(message.get("id") if isinstance(message, dict) else None,
                       "invalid_format", "Message incorrectly formatted.")
            return
        msg_id = message["id"]
        if msg_id <= self.last_id:
            self.error(msg_id, "id_reuse", "Identifier values have to increase.")
            return
        self.last_id = msg_id
        handler = getattr(self, "cmd_" + message["type"].replace("/", "_"), None)
        if handler is None:
            self.error(msg_id, "unknown_command", "Unknown command.")
            return
        handler(msg_id, message)

    def auth(self, message: Any) -> None:
        if not isinstance(message, dict) or message.get("type") != "auth":
            self.send({"type": "auth_invalid", "message": "Auth message incorrectly formatted"})
            self.sendClose()
            return
        if message.get("access_token") == self.fake.token and not self.fake.reject_auth:
            self.authenticated = True
            self.send({"type": "auth_ok", "ha_version": HA_VERSION})
        else:
            self.fake.auth_failures += 1
            text = "Invalid access token or password"
            if self.fake.echo_auth:  # a hostile or broken server repeating what it was sent
                text += f": {message.get('access_token')}"
            self.send({"type": "auth_invalid", "message": text})
            self.sendClose()

    # -- commands ------------------------------------------------------------
    def cmd_ping(self, msg_id: int, message: dict[str, Any]) -> None:
        if self.fake.answer_pings:
            self.send({"id": msg_id, "type": "pong"})

    def cmd_supported_features(self, msg_id: int, message: dict[str, Any]) -> None:
        features = message.get("features") or {}
        self.result(msg_id)
        self.coalesce = bool(features.get("coalesce_messages")) and self.fake.allow_coalescing

    def cmd_subscribe_entities(self, msg_id: int, message: dict[str, Any]) -> None:
        wanted = set(message.get("entity_ids") or [])
        self.subscriptions[msg_id] = wanted
        self.result(msg_id)
        snapshot = {e: s.compressed() for e, s in self.fake.states.items() if not wanted or e in wanted}
        self.event(msg_id, {"a": snapshot})

    def cmd_get_states(self, msg_id: int, message: dict[str, Any]) -> None:
        self.result(msg_id, [s.as_dict() for s in self.fake.states.values()])

    def cmd_energy_get_prefs(self, msg_id: int, message: dict[str, Any]) -> None:
        if self.fake.prefs is None:
            self.error(msg_id, "not_found", "No prefs")
        else:
            self.result(msg_id, self.fake.prefs)

    def cmd_unsubscribe_events(self, msg_id: int, message: dict[str, Any]) -> None:
        if self.subscriptions.pop(message.get("subscription"), None) is None:
            self.error(msg_id, "not_found", "Subscription not found.")
        else:
            self.result(msg_id)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.flush_call is not None and self.flush_call.active():
            self.flush_call.cancel()
        self.flush_call = None
        if self in self.fake.connections:
            self.fake.connections.remove(self)
        if not self.closed.called:
            self.closed.callback(None)


class HAServerFactory(WebSocketServerFactory):
    protocol = HAServerProtocol

    def __init__(self, fake: FakeHomeAssistant) -> None:
        super().__init__()
        self.fake = fake


class _States(Resource):
    def __init__(self, fake: FakeHomeAssistant) -> None:
        super().__init__()
        self.fake = fake

    def getChild(self, path: bytes, request: Any) -> Resource:
        return _OneState(self.fake, path.decode())

    def render_GET(self, request: Any) -> bytes:
        if not self.fake.authorized(request):
            return _unauthorized(request)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps([s.as_dict() for s in self.fake.states.values()]).encode()


class _OneState(Resource):
    isLeaf = True

    def __init__(self, fake: FakeHomeAssistant, entity_id: str) -> None:
        super().__init__()
        self.fake, self.entity_id = fake, entity_id

    def render_GET(self, request: Any) -> bytes:
        if not self.fake.authorized(request):
            return _unauthorized(request)
        request.setHeader(b"content-type", b"application/json")
        state = self.fake.states.get(self.entity_id)
        if state is None:
            request.setResponseCode(404)
            return json.dumps({"message": "Entity not found."}).encode()
        return json.dumps(state.as_dict()).encode()


class _Api(Resource):
    def __init__(self, fake: FakeHomeAssistant) -> None:
        super().__init__()
        self.fake = fake
        self.putChild(b"states", _States(fake))
        self.putChild(b"websocket", WebSocketResource(fake.factory))

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request: Any) -> bytes:
        if not self.fake.authorized(request):
            return _unauthorized(request)
        return json.dumps({"message": "API running."}).encode()


def _unauthorized(request: Any) -> bytes:
    request.setResponseCode(401)
    return b"401: Unauthorized"


class FakeHomeAssistant:
    """Start with ``listen()``; ``stop()`` closes everything (use as a cleanup)."""

    def __init__(self, token: str = "fake-long-lived-token", now: Callable[[], float] = time.time) -> None:
        self.token = token
        self.now = now
        self.states: dict[str, State] = {}
        self.prefs: dict[str, Any] | None = None
        self.answer_pings = True
        self.allow_coalescing = True
        self.reject_auth = False
        self.echo_auth = False  # auth_invalid repeats the token it was sent
        self.auth_failures = 0
        self.connections: list[HAServerProtocol] = []
        self.received: list[Any] = []
        self.rest_requests: list[str] = []
        self.sent_at: list[float] = []
        self._waiters: list[tuple[Callable[[Any], bool], Deferred[Any]]] = []
        self._batch: dict[str, Any] | None = None
        self.factory = HAServerFactory(self)
        root = Resource()
        root.putChild(b"api", _Api(self))
        self.site = Site(root)
        self.site.noisy = False
        self.port: Any = None

    # -- lifecycle -----------------------------------------------------------
    def listen(self) -> int:
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        return self.port.getHost().port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def drop_connections(self) -> Deferred[Any]:
        """Abort every WebSocket connection (a crashed HA / a network cut)."""
        waits = [c.closed for c in self.connections]
        for conn in list(self.connections):
            conn.dropConnection(abort=True)
        return DeferredList(waits)

    def stop(self) -> Deferred[Any]:
        d = self.drop_connections()
        port, self.port = self.port, None
        if port is not None:
            d.addCallback(lambda _: port.stopListening())
        return d

    def authorized(self, request: Any) -> bool:
        self.rest_requests.append(request.uri.decode())
        return request.getHeader(b"authorization") == f"Bearer {self.token}".encode() \
            and not self.reject_auth

    # -- waiting -------------------------------------------------------------
    def notify(self, message: Any) -> None:
        for entry in list(self._waiters):
            predicate, d = entry
            if predicate(message):
                self._waiters.remove(entry)
                d.callback(message)

    def wait_for(self, predicate: Callable[[Any], bool], start: int = 0,
                 timeout: float = 10.0) -> Deferred[Any]:
        """The first message received (from index ``start``) that matches."""
        for message in self.received[start:]:
            if predicate(message):
                return succeed(message)
        entry: list[Any] = []
        d: Deferred[Any] = Deferred(lambda d: self._waiters.remove(entry[0]))
        entry.append((predicate, d))
        self._waiters.append(entry[0])
        return d.addTimeout(timeout, reactor)

    def wait_type(self, kind: str, start: int = 0, timeout: float = 10.0) -> Deferred[Any]:
        return self.wait_for(lambda m: isinstance(m, dict) and m.get("type") == kind, start, timeout)

    # -- the state machine ---------------------------------------------------------
    def set_state(self, entity_id: str, state: str, attributes: dict[str, Any] | None = None,
                  force_update: bool = False) -> None:
        """Like ``hass.states.async_set``: no event when nothing changed."""
        now = self.now()
        old = self.states.get(entity_id)
        if old is None:
            new = State(entity_id, state, attributes or {}, now)
            self.states[entity_id] = new
            self._publish(entity_id, "a", new.compressed())
            return
        attributes = old.attributes if attributes is None else attributes
        same_state = old.state == state and not force_update
        if same_state and old.attributes == attributes:
            old.last_reported = now
            return
        snapshot = {"state": old.state, "attributes": dict(old.attributes),
                    "last_changed": old.last_changed, "last_updated": old.last_updated,
                    "context_id": old.context_id}
        old.state = state
        old.attributes = dict(attributes)
        if not same_state:
            old.last_changed = now
        old.last_updated = old.last_reported = now
        old.context_id = uuid.uuid4().hex[:26].upper()
        self._publish(entity_id, "c", state_diff(snapshot, old))

    def remove(self, entity_id: str) -> None:
        if self.states.pop(entity_id, None) is not None:
            self._publish(entity_id, "r", None)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Send every change inside the block as one event per subscription."""
        self._batch = {}
        try:
            yield
        finally:
            batch, self._batch = self._batch, None
            self._send_event(batch)

    def _publish(self, entity_id: str, key: str, value: Any) -> None:
        if self._batch is not None:
            if key == "r":
                self._batch.setdefault("r", []).append(entity_id)
            else:
                self._batch.setdefault(key, {})[entity_id] = value
            return
        self._send_event({"r": [entity_id]} if key == "r" else {key: {entity_id: value}})

    def _send_event(self, event: dict[str, Any]) -> None:
        ids = set(event.get("a") or {}) | set(event.get("c") or {}) | set(event.get("r") or [])
        for conn in list(self.connections):
            for sub_id, wanted in conn.subscriptions.items():
                if wanted and not ids & wanted:
                    continue
                part: dict[str, Any] = {}
                for key in ("a", "c"):
                    chosen = {e: v for e, v in (event.get(key) or {}).items() if not wanted or e in wanted}
                    if chosen:
                        part[key] = chosen
                removed = [e for e in event.get("r") or [] if not wanted or e in wanted]
                if removed:
                    part["r"] = removed
                conn.event(sub_id, part)

    def raw(self, payload: Any) -> None:
        """Send an arbitrary frame to every connection (JSON-encoded unless bytes)."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        for conn in list(self.connections):
            conn.sendMessage(data)


# Attribute sets as real integrations publish them (HA dsmr, HomeWizard, Shelly).
DSMR_POWER = {"state_class": "measurement", "unit_of_measurement": "kW", "device_class": "power",
              "friendly_name": "Electricity Meter Power consumption"}
DSMR_POWER_PRODUCTION = {"state_class": "measurement", "unit_of_measurement": "kW",
                         "device_class": "power", "friendly_name": "Electricity Meter Power production"}
DSMR_ENERGY = {"state_class": "total_increasing", "unit_of_measurement": "kWh", "device_class": "energy",
               "friendly_name": "Electricity Meter Energy consumption (tarif 1)"}
HOMEWIZARD_POWER = {"state_class": "measurement", "unit_of_measurement": "W", "device_class": "power",
                    "friendly_name": "P1 Meter Power", "icon": "mdi:transmission-tower"}
VOLTAGE = {"state_class": "measurement", "unit_of_measurement": "V", "device_class": "voltage",
           "friendly_name": "P1 Meter Voltage phase 1"}
