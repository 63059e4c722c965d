"""Transport-independent JSON-RPC core of the emulated Shelly (pure).

Frame in, frame out: HTTP, WebSocket and UDP all call :meth:`RpcCore.handle_frame`
or :meth:`RpcCore.call`, so every transport gives the same answers. No reactor,
no sockets; the method table lives in ``methods.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from meteremu.devices.shelly import jsonfmt
from meteremu.logs import logger

log = logger(__name__)

# Error codes of the Gen2 firmware (gRPC status codes, negated and -100).
INVALID_ARGUMENT = -103
NOT_FOUND = -105
UNAVAILABLE = -114
NO_HANDLER = 404
PARSE_ERROR = -32700

MAX_FRAME_BYTES = 64 * 1024
MAX_DEPTH = 32


class RpcError(Exception):
    """An error the device reports in the frame's ``error`` member."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code, self.message = code, message

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is asking, and how. ``src`` is the caller's frame ``src`` if any."""

    transport: str
    peer: str | None = None
    src: str | None = None
    local_ip: str | None = None
    user_agent: str | None = None


Handler = Callable[[dict[str, Any], CallContext], Any]


def _depth_ok(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """Iteratively check nesting depth, so deep garbage cannot exhaust the stack."""
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def _shallow(data: bytes | str) -> bool:
    """True when ``data`` has too few brackets to nest deeper than MAX_DEPTH.

    A C-speed count that spares the walk of :func:`_depth_ok` for every
    ordinary request (brackets inside strings only make it more cautious).
    """
    if isinstance(data, bytes):
        return data.count(b"[") + data.count(b"{") <= MAX_DEPTH
    return data.count("[") + data.count("{") <= MAX_DEPTH


def parse_frame(data: bytes | str) -> Any:
    """Decode one JSON frame, or raise RpcError(PARSE_ERROR)."""
    if len(data) > MAX_FRAME_BYTES:
        raise RpcError(PARSE_ERROR, "Frame too large")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        frame = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RpcError(PARSE_ERROR, "Invalid JSON frame") from None
    if not _shallow(data) and not _depth_ok(frame):
        raise RpcError(PARSE_ERROR, "Frame nested too deeply")
    return frame


def valid_frame_id(value: Any) -> bool:
    """Frame ids are numbers or strings; they are echoed with their type."""
    return isinstance(value, str | int | float) and not isinstance(value, bool)


class RpcCore:
    """Dispatches method calls for one device.

    ``methods`` maps the canonical method name to a handler; lookups are
    case-insensitive as on the device, and an unknown name gives 404
    ``No handler for <Method>``.
    """

    def __init__(self, device_id: Callable[[], str], methods: dict[str, Handler],
                 device_id_for: Callable[[str | None], str] | None = None) -> None:
        self._device_id = device_id
        # Per-client identities (``clients:``): the id a given peer sees; None = one id for all.
        self._device_id_for = device_id_for
        self._peer_id_json: dict[str, bytes] = {}
        self._id_json: tuple[str | None, bytes] = (None, b"")
        self.methods = dict(methods)
        self._lookup = {name.lower(): (name, handler) for name, handler in methods.items()}
        # Asked about every call to a known method (its canonical name, as in
        # ``methods``) before it runs; a guard refuses a call by raising
        # RpcError (the client tracker throttles polls that come too soon).
        self.guards: list[Callable[[str, CallContext], None]] = []
        # Told about every call a guard let through (metrics); an observer
        # only watches: if one raises, it is logged and the call goes on.
        self.observers: list[Callable[[str, CallContext], None]] = []
        # Told the error code of every error answered (metrics); same rule.
        self.error_observers: list[Callable[[int, CallContext], None]] = []
        self._broken: set[object] = set()

    @property
    def device_id(self) -> str:
        return self._device_id()

    @property
    def device_id_json(self) -> bytes:
        """The device id as JSON text (UTF-8), for frames spliced by hand."""
        device_id = self._device_id()
        if device_id != self._id_json[0]:
            self._id_json = (device_id, encode_basestring(device_id).encode("utf-8", "backslashreplace"))
        return self._id_json[1]

    def id_for(self, ctx: CallContext | None) -> str:
        """The ``src`` of frames to the caller of ``ctx`` (its own id under ``clients:``)."""
        if self._device_id_for is None or ctx is None:
            return self._device_id()
        return self._device_id_for(ctx.peer)

    def id_json_for(self, ctx: CallContext) -> bytes:
        """:meth:`id_for` as JSON text, for frames spliced by hand."""
        if self._device_id_for is None:
            return self.device_id_json
        device_id = self._device_id_for(ctx.peer)
        cached = self._peer_id_json.get(device_id)
        if cached is None:
            cached = encode_basestring(device_id).encode("utf-8", "backslashreplace")
            if len(self._peer_id_json) < 1024:
                self._peer_id_json[device_id] = cached
        return cached

    def call(self, method: str, params: Any, ctx: CallContext) -> Any:
        """Run one method; raise :class:`RpcError` for any failure."""
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RpcError(INVALID_ARGUMENT, "Invalid argument 'params': expected an object")
        entry = self._lookup.get(method.lower())
        if entry is None:
            raise RpcError(NO_HANDLER, f"No handler for {method}")
        name, handler = entry
        for guard in self.guards:
            guard(name, ctx)
        for observe in self.observers:
            try:
                observe(name, ctx)
            except Exception:
                self._observer_failed(observe)
        return handler(params, ctx)

    def _observer_failed(self, observer: object) -> None:
        """Log an observer's first failure (a bug in metrics must not fail requests)."""
        if observer not in self._broken:
            self._broken.add(observer)
            log.failure("an RPC observer failed (further failures are not logged)")

    def handle_frame(self, frame: Any, ctx: CallContext) -> dict[str, Any] | None:
        """Answer one decoded request frame with a response frame.

        Returns None when there is nothing to answer: a frame without ``id``
        is a notification (JSON-RPC semantics, as aioshelly treats it).
        """
        if not isinstance(frame, dict):
            return self._error(None, None, RpcError(INVALID_ARGUMENT, "Invalid frame: expected an object"), ctx)
        src = frame.get("src")
        if not isinstance(src, str) or not src:
            src = None
        frame_id = frame.get("id")
        if frame_id is None:
            return None
        if not valid_frame_id(frame_id):
            return self._error(None, src, RpcError(INVALID_ARGUMENT, "Invalid frame: 'id' must be a number or a string"),
                               ctx)
        method = frame.get("method")
        if not isinstance(method, str) or not method:
            return self._error(frame_id, src, RpcError(INVALID_ARGUMENT, "Invalid frame: missing 'method'"), ctx)
        if src is not None and ctx.src != src:
            ctx = CallContext(ctx.transport, ctx.peer, src, ctx.local_ip, ctx.user_agent)
        try:
            result = self.call(method, frame.get("params"), ctx)
        except RpcError as err:
            return self._error(frame_id, src, err, ctx)
        response: dict[str, Any] = {"id": frame_id, "src": self.id_for(ctx)}
        if src is not None:
            response["dst"] = src
        response["result"] = result
        return response

    def _error(self, frame_id: Any, src: str | None, err: RpcError, ctx: CallContext | None = None) -> dict[str, Any]:
        if ctx is not None:
            self.report_error(err.code, ctx)
        response: dict[str, Any] = {"id": frame_id, "src": self.id_for(ctx)}
        if src is not None:
            response["dst"] = src
        response["error"] = err.as_dict()
        return response

    def report_error(self, code: int, ctx: CallContext) -> None:
        """Tell the error observers that ``ctx`` was answered with error ``code``."""
        for observe in self.error_observers:
            try:
                observe(code, ctx)
            except Exception:
                self._observer_failed(observe)

    def handle_bytes(self, data: bytes | str, ctx: CallContext) -> bytes | None:
        """Bytes in, bytes out (with the firmware's number formatting)."""
        try:
            frame = parse_frame(data)
        except RpcError as err:
            return jsonfmt.dumpb(self._error(None, None, err, ctx))
        response = self.handle_frame(frame, ctx)
        return None if response is None else jsonfmt.dumpb(response)
