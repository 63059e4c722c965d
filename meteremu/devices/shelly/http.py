"""The Pro 3EM's HTTP face: ``/shelly``, ``/rpc`` and ``/rpc/<Method>``.

Thin I/O over :class:`RpcCore`: this module only turns requests into
``(method, params)`` or frames and writes the answer. The four request forms
of the real device (spec §2.2) give the same result object:

- ``GET /rpc/<Method>?k=v``    → bare result; query values are JSON
- ``POST /rpc/<Method>``       → bare result; body = params (or a whole frame, as evcc sends)
- ``POST /rpc``                → whole response frame
- ``GET /rpc?method=<Method>`` → bare result; the other query keys are params

Errors in the bare forms are ``{"code", "message"}`` with a non-200 status.
A WebSocket upgrade on ``/rpc`` is handed to ``ws_resource`` when one is set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from meteremu.compat.http_server import TOO_LARGE, Refusal
from meteremu.devices.shelly import jsonfmt, rpc
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.rpc import CallContext, RpcError
from meteremu.devices.shelly.status import device_info

JSON = b"application/json"
MAX_BODY = rpc.MAX_FRAME_BYTES

# HTTP status for RPC error codes (spec §8 leaves the negative ones open: we
# answer like a REST API would, 404 for unknown methods as the device does).
HTTP_STATUS = {rpc.NO_HANDLER: 404, 401: 401, rpc.INVALID_ARGUMENT: 400,
               rpc.NOT_FOUND: 404, rpc.UNAVAILABLE: 503, rpc.PARSE_ERROR: 400}


def parse_query_params(query: bytes) -> dict[str, Any]:
    """``id=0&phase="a"&esp`` → ``{"id": 0, "phase": "a", "esp": ""}``.

    Values are JSON as the device reads them; a value that is not valid JSON
    is kept as its text (so ``?esp`` or ``?name=x`` do not fail the call).
    """
    params: dict[str, Any] = {}
    text = query.decode("utf-8", errors="replace")
    for key, value in parse_qsl(text, keep_blank_values=True):
        try:
            params[key] = json.loads(value) if value else value
        except (ValueError, RecursionError):
            params[key] = value
    return params


def _context(request: IRequest) -> CallContext:
    peer = request.getClientAddress()
    host = request.getHost()
    agent = request.getHeader(b"user-agent")
    return CallContext("http", getattr(peer, "host", None), None, getattr(host, "host", None),
                       agent.decode("latin-1") if agent else None)


def _read_body(request: IRequest) -> bytes:
    return request.content.read(MAX_BODY + 1) if request.content is not None else b""


def refusal(device: ShellyDevice) -> Refusal:
    """How a request body refused before it is read looks on the RPC routes.

    The device's own error shapes: a frame on ``POST /rpc`` (-32700 "Frame too
    large", as for a frame the parser refuses), a bare error on ``/rpc/<Method>``.
    """

    def answer(path: bytes, what: str, limit: int) -> bytes:
        err = (RpcError(rpc.PARSE_ERROR, "Frame too large") if what == TOO_LARGE else
               RpcError(rpc.INVALID_ARGUMENT, "Invalid request: an upgrade request carries no body"))
        if path.rstrip(b"/") == b"/rpc":
            return jsonfmt.dumpb({"id": None, "src": device.core.device_id, "error": err.as_dict()})
        return jsonfmt.dumpb(err.as_dict())

    return answer


def install_routes(
    app: Klein,
    device: ShellyDevice,
    ws_resource: Callable[[], IResource] | None = None,
    observe_latency: Callable[[str, float], None] | None = None,
) -> None:
    """Add the device's routes to ``app``."""
    core = device.core

    def bare(request: IRequest, method: str, params: Any) -> bytes:
        started = time.perf_counter()
        request.setHeader(b"content-type", JSON)
        ctx = _context(request)
        try:
            body = jsonfmt.dumpb(core.call(method, params, ctx))
        except RpcError as err:
            core.report_error(err.code, ctx)
            request.setResponseCode(HTTP_STATUS.get(err.code, 500))
            body = jsonfmt.dumpb(err.as_dict())
        if observe_latency is not None:
            observe_latency("http", time.perf_counter() - started)
        return body

    def body_json(request: IRequest) -> Any:
        raw = _read_body(request)
        if not raw.strip():
            return {}
        return rpc.parse_frame(raw)

    @app.route("/shelly", methods=["GET"])
    def shelly(request: IRequest) -> bytes:
        request.setHeader(b"content-type", JSON)
        return jsonfmt.dumpb(device_info(device.identity_for(_context(request).peer)))

    @app.route("/rpc/<string:method>", methods=["GET", "POST"])
    def rpc_method(request: IRequest, method: str) -> bytes:
        params: Any = parse_query_params(request.uri.partition(b"?")[2])
        if request.method == b"POST":
            try:
                body = body_json(request)
            except RpcError as err:
                request.setHeader(b"content-type", JSON)
                request.setResponseCode(400)
                return jsonfmt.dumpb(err.as_dict())
            if isinstance(body, dict) and "method" in body:
                body = body.get("params") or {}
            if isinstance(body, dict):
                params = {**params, **body}
            else:
                params = body
        return bare(request, method, params)

    @app.route("/rpc", methods=["GET", "POST"])
    def rpc_frame(request: IRequest) -> Any:
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade == b"websocket" and ws_resource is not None:
            return ws_resource()
        if request.method == b"GET":
            params = parse_query_params(request.uri.partition(b"?")[2])
            method = params.pop("method", None)
            if not isinstance(method, str) or not method:
                request.setHeader(b"content-type", JSON)
                request.setResponseCode(400)
                return jsonfmt.dumpb({"code": rpc.INVALID_ARGUMENT, "message": "Missing required 'method'"})
            return bare(request, method, params)
        started = time.perf_counter()
        request.setHeader(b"content-type", JSON)
        response = core.handle_bytes(_read_body(request), _context(request))
        if observe_latency is not None:
            observe_latency("http", time.perf_counter() - started)
        if response is None:  # a frame without id: nothing to answer
            request.setResponseCode(204)
            return b""
        return response
