"""Home Assistant, the I/O part: WebSocket push (autobahn) and REST via treq.

Connection life (``mode: websocket``)::

    connect ──> auth_required ─auth─> auth_ok ─> supported_features (coalescing)
        │                                │
        │            (no mapping yet) energy/get_prefs, get_states ─> discover
        │                                │
        │                       subscribe_entities [watched ids] ─> result ─> events …
        │                                └─ ping every ping_interval, pong within ping_timeout
        └── at the same time: REST GET /api/states/<id> for every watched entity (seed)

Any failure (refused, handshake timeout, ``auth_invalid``, no pong, close)
ends the connection, and Twisted's ``ClientService`` (:mod:`meteremu.reconnect`)
makes the next attempt after exponential backoff with jitter
(``reconnect_min`` … ``reconnect_max``); the backoff resets once a
subscription succeeds (not merely a connection: a proxy in front of a dead
HA accepts those). A rejected token waits ``reconnect_max`` before trying
again (no retry storm) and marks the meter down with "bad token".

Freshness (design.md §4, push source): every message on a working
subscription, pongs included, calls ``Meter.alive()``, so a steady value that
HA never re-sends stays fresh while the connection lives. A lost connection
is a *soft* failure (the meter decays to stale after ``stale_after``), because
the Meter only leaves ``down`` on a new sample and a reconnect that finds the
same values brings none. ``unavailable``, a removed entity, a missing power
entity, a bad token or a failed discovery mark the meter down.

``mode: poll`` fetches each watched entity with ``GET /api/states/<id>``
every ``interval``; each successful poll is a heartbeat, as above.

Secrets: the token only ever goes into the ``auth`` message and the
``Authorization`` header. Errors are built from exception *types*, status
codes and HA's own error messages, never from requests.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from meteremu.backoff import next_delay
from meteremu.failures import Explained
from meteremu.httpclient import HTTPClient, HttpResult, describe
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.reconnect import Reconnector
from meteremu.sources.common import SourceStatus
from meteremu.sources.homeassistant import protocol as ha
from meteremu.sources.homeassistant.options import HomeAssistantOptions
from meteremu.sources.websocket import SourceWebSocket, websocket_reconnector
from meteremu.tls import web_policy

log = logger(__name__)

MAX_BODY = 32 * 1024 * 1024
MAX_MESSAGE = 64 * 1024 * 1024
WAIT_WHILE_STOPPING = 3600.0  # stopService cancels it: a retry never comes while stopping


class AuthError(Explained):
    """HA rejected the token (``auth_invalid``, HTTP 401/403)."""


class NotFound(Explained):
    """REST 404: the entity does not exist."""


class HTTPStatusError(Explained):
    pass


class _Session:
    """State of one WebSocket connection."""

    def __init__(self, conn: SourceWebSocket) -> None:
        self.conn = conn
        self.ids = ha.MessageIds()
        self.authenticated = False
        self.subscription: int | None = None
        self.pending: dict[int, Callable[[dict[str, Any]], None]] = {}
        self.ping_loop: LoopingCall | None = None
        self.ping_id: int | None = None
        self.timer: Any = None  # auth / pong deadline
        self.reason: str | None = None
        self.fatal = False  # the failure was reported already (bad token, no sensor)
        self.opened = False


class HomeAssistantSource(SourceStatus, Service):
    """Feeds a Meter from Home Assistant (see the module docstring)."""

    type_name = "homeassistant"

    def __init__(self, meter: Meter, options: HomeAssistantOptions, reactor: IReactor,
                 clock: IReactorTime | None = None, rng: Callable[[], float] = random.random) -> None:
        self.meter = meter
        self.options = options
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.rng = rng
        parts = urlsplit(options.url)
        self.base_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        if options.websocket_url:
            self.ws_url = options.websocket_url
        else:
            scheme = "wss" if parts.scheme == "https" else "ws"
            self.ws_url = urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/api/websocket", "", ""))
        self.smoother = ha.Smoother.from_options(options.smoothing)
        self.mapping: ha.EntityMapping | None = None
        self.tracker: ha.Tracker | None = None
        self.state = "stopped"
        if options.entities is not None and options.circuits != "auto":
            self._use_mapping(ha.EntityMapping(
                entities=options.entities.as_dict(),
                circuits=dict(options.circuits) if isinstance(options.circuits, dict) else {},
                invert=options.invert, origin="configured"))
        self.session: _Session | None = None
        self.attempts = 0
        self.connections = 0
        self._timer = None
        self.reconnector: Reconnector | None = None
        self.http: HTTPClient | None = None
        self._stopping = False
        self._slow_retry = False
        self._said: dict[str, str] = {}
        self.bad_messages = 0  # messages whose handling raised (ignored, connection kept)
        self._unexpected: set[type] = set()  # exception types already logged with a traceback
        self._last_error = ""
        self._details()

    # -- lifecycle -------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.http = HTTPClient(self.reactor, self.options.timeout, clock=self.clock, per_host=4)
        if self.options.mode == "poll":
            self._call_later(0.0, self._poll)
            return
        if self.reconnector is None:
            self.reconnector = self._reconnector()
        self.reconnector.start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stop_running("_timer")
        waits: list[Deferred[Any]] = []
        session = self.session
        goodbye = None
        if session is not None:
            self._end_session(session)
            if session.opened:
                session.conn.sendClose(1000)  # HA answers, then closes the connection
                goodbye = session.conn.closed
        if self.reconnector is not None:
            waits.append(self.reconnector.stop(goodbye))
        http, self.http = self.http, None
        if http is not None:
            waits.append(http.close())
        return DeferredList(waits, consumeErrors=True)

    # -- mapping, status ---------------------------------------------------------------
    def _use_mapping(self, mapping: ha.EntityMapping) -> None:
        self.mapping = mapping
        self.tracker = ha.Tracker(mapping, self.smoother)
        log.info("meter {meter}: Home Assistant mapping ({origin}): {mapping}", meter=self.meter.name,
                 origin=mapping.origin, mapping=json.dumps(mapping.describe(), sort_keys=True))
        self._details()

    def _details(self) -> None:
        """What /healthz can show about this source (no secrets)."""
        self.meter.details = {
            "url": self.base_url,
            "mode": self.options.mode,
            "connection": self.state,
            "mapping": self.mapping.describe() if self.mapping else None,
        }

    def _fail(self, message: str, down: bool) -> None:
        self.meter.report_failure(message, down=down)
        self._say("failure", message)

    def _handle(self, outcome: ha.Outcome) -> None:
        for warning in outcome.warnings:
            log.warn("meter {meter}: {text}", meter=self.meter.name, text=warning)
        for entity in outcome.not_found:
            self._say(f"404:{entity}", f"{entity} does not exist in Home Assistant")
        if outcome.down is not None:
            self._fail(outcome.down, down=True)
        elif outcome.reading is not None:
            self.meter.update(outcome.reading)
            self._said.pop("failure", None)
        elif outcome.waiting:
            self._say("waiting", "waiting for a value from " + ", ".join(outcome.waiting), "info")

    def _heartbeat(self) -> None:
        if self.tracker is not None and self.tracker.ready:
            self.meter.alive()

    # -- scheduling ----------------------------------------------------------------------
    def _backoff(self) -> float:
        self.attempts += 1
        if self._slow_retry:
            return self.options.reconnect_max
        return next_delay(self.attempts, self.options.reconnect_min, self.options.reconnect_max, self.rng)

    # -- REST ------------------------------------------------------------------------------
    def get_json(self, path: str) -> Deferred[Any]:
        """GET ``/api/<path>``; the whole exchange is bounded by ``timeout``."""
        if self._stopping or self.http is None:
            return defer.fail(defer.CancelledError("source stopped"))
        headers = {"Authorization": f"Bearer {self.options.token}", "Accept": "application/json"}
        d = self.http.request("GET", f"{self.base_url}/api/{path}", headers, limit=MAX_BODY, redirects=True)

        def check(result: HttpResult) -> Any:
            code = result.status
            if code in (401, 403):
                raise AuthError(f"Home Assistant rejected the access token (HTTP {code})")
            if code == 404:
                raise NotFound(f"HTTP 404 for /api/{path}")
            if code != 200:
                raise HTTPStatusError(f"HTTP {code} from /api/{path.split('/')[0]}")
            return json.loads(result.body)

        return d.addCallback(check)

    def _fetch_entities(self, entities: list[str]) -> Deferred[list[tuple[str, Any]]]:
        """GET every entity; → ``[(entity_id, state object | Failure)]``."""
        ds = [self.get_json("states/" + quote(entity, safe=".")) for entity in entities]
        d = DeferredList(ds, consumeErrors=True)
        return d.addCallback(lambda results: [(e, r) for e, (_, r) in zip(entities, results, strict=True)])

    def _apply_fetched(self, results: list[tuple[str, Any]]) -> bool:
        """Feed fetched states to the tracker; True when every fetch worked."""
        assert self.tracker is not None
        objects, ok = [], True
        for entity, result in results:
            if isinstance(result, Failure):
                if result.check(NotFound):
                    self._handle(self.tracker.not_found(entity))
                    continue
                if result.check(AuthError):
                    raise AuthError(result.getErrorMessage())
                ok = False
                self._last_error = describe(result)
                continue
            if isinstance(result, dict):
                objects.append(result)
        if objects:
            self._handle(self.tracker.apply_rest(objects))
        return ok

    def _seed(self) -> None:
        """REST seeding on (re)connect: values even for entities the snapshot lacks."""
        if self.tracker is None:
            return
        d = self._fetch_entities(self.tracker.watched)

        def apply(results: list[tuple[str, Any]]) -> None:
            if self._stopping or self.tracker is None:
                return
            try:
                if not self._apply_fetched(results):
                    self._say("seed", f"REST seed incomplete: {self._last_error}", "info")
            except AuthError as err:
                self._slow_retry = True
                self._fail(str(err), down=True)

        d.addCallback(apply)
        d.addErrback(lambda f: log.failure("REST seed failed", f))

    # -- poll mode ---------------------------------------------------------------------------
    @defer.inlineCallbacks
    def _poll(self) -> Any:
        delay = self.options.interval
        try:
            if self.tracker is None:  # discovery (REST has no energy prefs: heuristics only)
                states = yield self.get_json("states")
                if self._stopping:
                    return
                if not self._discovered(None, states if isinstance(states, list) else []):
                    delay = self.options.reconnect_max
                    return
            assert self.tracker is not None
            results = yield self._fetch_entities(self.tracker.watched)
            if self._stopping:
                return
            ok = self._apply_fetched(results)
            if ok:
                self._set_state("polling")
                self.attempts = 0
                self._slow_retry = False
                self._heartbeat()
            else:
                self.attempts += 1
                self._set_state("failing")
                self._fail(f"poll failed: {self._last_error}", down=False)
        except AuthError as err:
            self._slow_retry = True
            delay = self.options.reconnect_max
            self._set_state("bad token")
            self._fail(str(err), down=True)
        except Exception as exc:  # never let one poll stop the loop
            if self._stopping:
                return
            self.attempts += 1
            self._set_state("failing")
            self._fail(f"poll failed: {describe(exc)}", down=False)
        finally:
            self._call_later(delay, self._poll)

    # -- discovery ------------------------------------------------------------------------------
    def _discovered(self, prefs: Any, states: list[Any]) -> bool:
        """Choose the mapping from prefs/states; False (and meter down) when none fits."""
        objects: list[Mapping[str, Any]] = [s for s in states if isinstance(s, dict)]
        if self.options.entities is not None:  # configured entities, circuits: auto
            base = ha.EntityMapping(entities=self.options.entities.as_dict(), invert=self.options.invert)
            used = base.entity_ids()
            circuits = ha.circuits_from_prefs(prefs)
            for name, entity in ha.circuits_from_states(objects, [*used, *circuits.values()]).items():
                circuits.setdefault(name, entity)
            mapping = ha.EntityMapping(entities=base.entities, invert=base.invert,
                                       circuits=dict(list(circuits.items())[:ha.MAX_CIRCUITS]),
                                       origin="configured")
        else:
            want = self.options.circuits in (None, "auto")
            found = ha.discover(prefs, objects, want_circuits=want)
            if found is None:
                self._set_state("no power sensor")
                self._fail("auto-discovery found no grid power sensor in Home Assistant; "
                           "set source.entities.power", down=True)
                return False
            circuits = dict(self.options.circuits) if isinstance(self.options.circuits, dict) \
                else dict(found.circuits)
            mapping = ha.EntityMapping(entities=found.entities, circuits=circuits,
                                       invert=found.invert != self.options.invert, origin=found.origin)
        self._use_mapping(mapping)
        assert self.tracker is not None
        self._handle(self.tracker.apply_rest(o for o in objects if o.get("entity_id") in self.tracker.watched))
        return True

    # -- WebSocket ----------------------------------------------------------------------------
    def _reconnector(self) -> Reconnector:
        parts = urlsplit(self.ws_url)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        return websocket_reconnector(self, self.ws_url, parts.hostname or "", port, tls=web_policy(),
                                     timeout=self.options.timeout, max_size=MAX_MESSAGE, reactor=self.reactor,
                                     clock=self.clock, retry=self._retry_delay, attempting=self._attempting,
                                     failed=self._connect_failed,
                                     name=f"meter {self.meter.name}: Home Assistant {self.ws_url}")

    # ClientService's hooks (meteremu.reconnect): they run inside its state machine.
    def _attempting(self) -> None:
        self._set_state("connecting")
        self._seed()

    def _connect_failed(self, failure: Failure) -> None:
        if self._stopping or failure.check(defer.CancelledError):
            return
        self._set_state("disconnected")
        self._fail(f"cannot connect to Home Assistant: {describe(failure)}", down=False)

    def _retry_delay(self) -> float:
        return WAIT_WHILE_STOPPING if self._stopping else self._backoff()

    def ws_connected(self, conn: SourceWebSocket) -> None:
        if self._stopping:
            conn.dropConnection(abort=True)
            return
        self.session = _Session(conn)

    def ws_opened(self, conn: SourceWebSocket) -> None:
        session = self.session
        if session is None or session.conn is not conn or self._stopping:
            conn.dropConnection(abort=True)
            return
        session.opened = True
        self._set_state("authenticating")
        session.timer = self.clock.callLater(self.options.timeout, self._abort, session,
                                             "no auth_ok within the timeout")

    def _send(self, session: _Session, message: dict[str, Any]) -> None:
        if session is self.session and session.conn.state == WebSocketClientProtocol.STATE_OPEN:
            session.conn.sendMessage(ha.dumps(message))

    def _command(self, session: _Session, kind: str, reply: Callable[[dict[str, Any]], None] | None,
                 **fields: Any) -> int:
        msg_id = session.ids.next()
        if reply is not None:
            session.pending[msg_id] = reply
        self._send(session, ha.command(msg_id, kind, **fields))
        return msg_id

    def _abort(self, session: _Session, reason: str) -> None:
        """End the connection; ``ws_closed`` reports ``reason``, ClientService tries again."""
        session.reason = reason
        session.timer = None
        session.conn.dropConnection(abort=True)

    def ws_message(self, conn: SourceWebSocket, payload: bytes) -> None:
        session = self.session
        if session is None or session.conn is not conn or self._stopping:
            return
        try:
            messages = ha.parse_frame(payload)
        except ValueError:
            self._say("frame", "ignoring a frame that is not JSON messages")
            return
        for message in messages:
            if self.session is not session:
                return
            try:
                self._dispatch(session, message)
            except Exception as exc:  # noqa: BLE001 - last line of defence, see below
                # A message this code did not expect must not escape into
                # autobahn (which would drop the connection, and HA would
                # resend the same state after the reconnect's snapshot).
                # Log the first of each kind with its traceback, count all.
                self.bad_messages += 1
                failure = Failure()
                if type(exc) not in self._unexpected:
                    self._unexpected.add(type(exc))
                    log.failure("meter {meter}: ignoring a Home Assistant message that could not be handled",
                                failure, meter=self.meter.name)
        if session.subscription is not None:
            self._heartbeat()

    def _dispatch(self, session: _Session, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if not session.authenticated:
            if kind == "auth_required":
                self._send(session, ha.auth_message(self.options.token))
            elif kind == "auth_ok":
                session.authenticated = True
                if session.timer is not None and session.timer.active():
                    session.timer.cancel()
                session.timer = None
                self._slow_retry = False
                self._authenticated(session)
            elif kind == "auth_invalid":
                self._slow_retry = True
                session.reason, session.fatal = "auth_invalid", True
                self._set_state("bad token")
                # HA's own text is not repeated: a server that echoes what it
                # was sent could put the token there (it reaches /healthz).
                self._fail("Home Assistant rejected the access token (auth_invalid)", down=True)
            return
        msg_id = message.get("id")
        if kind == "event":
            if msg_id == session.subscription and self.tracker is not None:
                event = message.get("event")
                if isinstance(event, dict):
                    self._handle(self.tracker.apply_event(event))
        elif kind == "result":
            reply = session.pending.pop(msg_id, None) if isinstance(msg_id, int) else None
            if reply is not None:
                reply(message)
        elif kind == "pong":
            if msg_id == session.ping_id:
                session.ping_id = None
                if session.timer is not None and session.timer.active():
                    session.timer.cancel()
                session.timer = None

    def _authenticated(self, session: _Session) -> None:
        self._set_state("authenticated")
        self._command(session, "supported_features", None, features={"coalesce_messages": 1})
        if self.tracker is not None:  # mapping known: configured or discovered earlier
            self._subscribe(session)
            return
        found: dict[str, Any] = {}

        def got_prefs(message: dict[str, Any]) -> None:
            found["prefs"] = message.get("result") if message.get("success") else None
            if not message.get("success"):
                error = message.get("error")
                error = error if isinstance(error, dict) else {}
                self._say("prefs", f"no energy preferences ({error.get('code')}); using heuristics", "info")
            self._command(session, "get_states", got_states)

        def got_states(message: dict[str, Any]) -> None:
            states = message.get("result")
            if not message.get("success") or not isinstance(states, list):
                self._abort(session, "get_states failed")
                return
            if self._discovered(found.get("prefs"), states):
                self._subscribe(session)
            else:
                self._slow_retry = True  # wait reconnect_max before looking again
                session.fatal = True
                session.conn.dropConnection(abort=True)

        self._command(session, "energy/get_prefs", got_prefs)

    def _subscribe(self, session: _Session) -> None:
        assert self.tracker is not None
        watched = self.tracker.watched

        def subscribed(message: dict[str, Any]) -> None:
            if not message.get("success"):
                error = message.get("error")
                error = error if isinstance(error, dict) else {}
                session.subscription = None
                self._abort(session, f"subscribe_entities failed: {error.get('code')}")
                return
            self.attempts = 0
            self.connections += 1
            self._set_state("connected")
            self._said.pop("failure", None)
            log.info("meter {meter}: subscribed to {n} Home Assistant entities", meter=self.meter.name,
                     n=len(watched))
            session.ping_loop = LoopingCall(self._ping, session)
            session.ping_loop.clock = self.clock
            session.ping_loop.start(self.options.ping_interval, now=False)

        # Events can follow the result in the same frame: accept them from now on.
        session.subscription = self._command(session, "subscribe_entities", subscribed, entity_ids=watched)

    def _ping(self, session: _Session) -> None:
        if session.ping_id is not None:
            return  # the deadline handles a missing pong
        session.ping_id = self._command(session, "ping", None)
        session.timer = self.clock.callLater(self.options.ping_timeout, self._abort, session,
                                             f"no pong within {self.options.ping_timeout:g} s")

    def _end_session(self, session: _Session) -> None:
        if session.ping_loop is not None and session.ping_loop.running:
            session.ping_loop.stop()
        session.ping_loop = None
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None
        session.pending.clear()
        session.subscription = None

    def ws_closed(self, conn: SourceWebSocket, code: int | None, reason: str | None) -> None:
        session = self.session
        if session is None or session.conn is not conn:
            return
        self.session = None
        self._end_session(session)
        if self._stopping:
            return
        if not session.fatal:
            self._set_state("disconnected")
            why = session.reason or f"closed ({code})"  # the close reason is the server's text: not shown
            self._fail(f"Home Assistant connection lost: {why}", down=False)
