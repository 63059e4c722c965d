"""Operations endpoints: ``/healthz``, ``/metrics`` and ``/admin/overview``.

``/healthz`` answers 200 only while every meter is fresh (503 otherwise), so
a systemd watchdog or a container health check sees a stale source.
Source errors are shown as the sources wrote them; sources must never put
secrets in them (they are tested for it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from meteremu.exporters.prometheus import CONTENT_TYPE, Metrics
from meteremu.meter import Freshness, IClock, Meter


def meter_health(meter: Meter) -> dict[str, Any]:
    stats = meter.stats
    rate = stats.success_rate
    age = meter.age()
    body: dict[str, Any] = {
        "state": meter.freshness().value,
        "source": meter.source_type,
        "age_s": None if age is None else round(age, 3),
        "last_success": stats.last_success,
        "last_error": stats.last_error,
        "fetches": stats.fetches,
        "failures": stats.failures,
        "success_rate": None if rate is None else round(rate, 4),
    }
    if meter.details:
        body["details"] = meter.details
    return body


def health(meters: Iterable[Meter], uptime: float,
           store: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """Pure: ``(http status, body)`` for /healthz.

    Degraded (503) while a meter is not fresh, or while the store cannot save
    (``store["state"] == "failing"``): counters that are not being kept are
    a problem an operator must see.
    """
    body = {name: meter_health(m) for name, m in ((m.name, m) for m in meters)}
    ok = all(m["state"] == Freshness.FRESH.value for m in body.values())
    if store is not None and store.get("state") != "ok":
        ok = False
    out: dict[str, Any] = {
        "status": "ok" if ok else "degraded",
        "uptime_s": round(uptime, 3),
        "meters": body,
    }
    if store is not None:
        out["store"] = store
    return (200 if ok else 503), out


def install_routes(
    app: Klein,
    meters: Callable[[], Iterable[Meter]],
    clock: IClock,
    started_at: float,
    metrics: Metrics | None,
    overview: Callable[[], dict[str, Any]] | None = None,
    store: Callable[[], dict[str, Any]] | None = None,
) -> None:
    @app.route("/healthz", methods=["GET"])
    def healthz(request: IRequest) -> bytes:
        code, body = health(meters(), clock.seconds() - started_at, store() if store is not None else None)
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode()

    if metrics is not None:
        @app.route("/metrics", methods=["GET"])
        def metrics_route(request: IRequest) -> bytes:
            request.setHeader(b"content-type", CONTENT_TYPE.encode())
            return metrics.render()

    if overview is not None:
        @app.route("/admin/overview", methods=["GET"])
        def admin_overview(request: IRequest) -> bytes:
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(overview()).encode()


class CORS(Resource):
    """Adds CORS headers to every answer and answers preflight ``OPTIONS``.

    Klein has nothing built in; wrapping the root keeps it in one place.
    """

    isLeaf = True

    def __init__(self, wrapped: Resource, origins: tuple[str, ...]) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._origins = origins

    def _allow(self, request: IRequest) -> None:
        origin = (request.getHeader(b"origin") or b"").decode("latin-1")
        if "*" in self._origins:
            request.setHeader(b"access-control-allow-origin", b"*")
        elif origin in self._origins:
            request.setHeader(b"access-control-allow-origin", origin.encode("latin-1"))
            request.setHeader(b"vary", b"Origin")

    def render(self, request: IRequest) -> Any:
        self._allow(request)
        if request.method == b"OPTIONS":
            request.setResponseCode(204)
            request.setHeader(b"access-control-allow-methods", b"GET, POST, OPTIONS")
            request.setHeader(b"access-control-allow-headers", b"Content-Type, Authorization")
            request.setHeader(b"access-control-max-age", b"600")
            return b""
        return self._wrapped.render(request)
