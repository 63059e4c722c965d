"""The dashboard: ``/ui`` (static page), ``GET /ui/power`` (JSON), ``POST /ui/train``.

The page is three hand-written static files in ``meteremu/web/static`` (no
build step, no CDN: it works offline on a LAN) that poll ``/ui/power`` every
few seconds and ``/admin/overview`` for the battery clients.

``/ui/power`` works without forecasting: history then comes from the Meter's
own ring of readings (an hour at most), and ``model``/``baselines``/``skill``
are null, ``forecast`` is ``[]``. With forecasting on, history is the
dataset's buckets (``resolution`` wide, from the store for the spans memory
does not hold, up to 7 days) and only the seconds after the last finished
bucket come from the ring; ``history_parts`` says which part came from where,
backfilled (simulated) buckets included (:mod:`meteremu.web.history`). The
forecast continues the history. Timestamps are epoch
seconds on the *source's* clock (a simulator's fast clock included); ``now``
is the newest reading's timestamp, ``server_time`` the server's clock, which
``last_seen`` in ``/admin/overview`` uses.

Energy today: the Meter's lifetime counters minus their value at local
midnight, from the application's :class:`~meteremu.days.DayLedger` (the same
day starts the InfluxDB daily summary uses, kept in the store, so a restart
in the afternoon still counts from midnight).

This module never imports numpy or scikit-learn; the forecast service is
passed in (or ``None``) and used through a few methods only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.web.iweb import IRequest

from meteremu.days import DayLedger
from meteremu.interfaces import IReactorTime
from meteremu.meter import Meter
from meteremu.meterset import MeterSet
from meteremu.reading import PHASE_NAMES
from meteremu.web.guard import base_href
from meteremu.web.history import compose, step_for
from meteremu.web.ops import meter_health

if TYPE_CHECKING:
    from meteremu.forecast.trainer import ForecastService

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CSP = (b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       b"connect-src 'self'; base-uri 'self'; form-action 'none'; frame-ancestors 'none'")
# Behind Home Assistant's ingress the page is shown in an iframe of Home
# Assistant's own page, which is the same origin as the ingress URL.
CSP_INGRESS = CSP.replace(b"frame-ancestors 'none'", b"frame-ancestors 'self'")
BASE_TAG = b'<base href="/">'


def with_base(page: bytes, href: str) -> bytes:
    """Pure: the page with its ``<base href>`` set (every link in it and in app.js is relative)."""
    return page.replace(BASE_TAG, b'<base href="' + href.encode("ascii") + b'">', 1)

DEFAULT_SPAN = 3600.0
MIN_SPAN = 60.0
MAX_SPAN = 7 * 86400.0  # the longest chart (the dataset keeps 14 days by default)


class EnergyToday:
    """``energy_today`` of ``/ui/power``: the ledger's counters since local midnight, per phase."""

    def __init__(self, days: DayLedger) -> None:
        self.days = days

    def today(self, meter: Meter) -> dict[str, Any]:
        """``{"day", "a": {"import_wh", "export_wh"}, …, "total": {…}}``."""
        start = self.days.start_of_day(meter)
        gained = self.days.today(meter)
        out: dict[str, Any] = {"day": start.day.isoformat() if start is not None else None}
        total_i = total_e = 0.0
        for index, name in enumerate(PHASE_NAMES):
            imp, exp = gained[index] if index < len(gained) else (0.0, 0.0)
            total_i += imp
            total_e += exp
            out[name] = {"import_wh": round(imp, 2), "export_wh": round(exp, 2)}
        out["total"] = {"import_wh": round(total_i, 2), "export_wh": round(total_e, 2)}
        return out


def _points(points: Sequence[tuple[float, float]]) -> list[list[float]]:
    return [[round(t, 3), round(v, 1)] for t, v in points]


class Dashboard:
    """Builds the ``/ui/power`` answer (pure apart from reading the meters' state)."""

    def __init__(self, meters: MeterSet, clock: IReactorTime, days: DayLedger,
                 forecast: ForecastService | None = None) -> None:
        self.meters = meters
        self.clock = clock
        self.forecast = forecast
        self.energy = EnergyToday(days)

    def training(self) -> dict[str, Any]:
        if self.forecast is None:
            return {"state": "idle", "progress": 0.0, "enabled": False, "message": "forecasting is off"}
        return {**self.forecast.training_status(), "enabled": True}

    async def power(self, name: str | None, span: float = DEFAULT_SPAN) -> tuple[int, dict[str, Any]]:
        names = self.meters.keys()
        server_time = self.clock.seconds()
        if name is None:
            name = names[0] if names else None
        if name is None or name not in self.meters:
            return 404, {"error": f"unknown meter {name!r}" if name else "no meter is configured",
                         "meters": names, "server_time": server_time}
        meter: Meter = self.meters[name]
        span = max(MIN_SPAN, min(MAX_SPAN, span))
        reading = meter.latest
        phases: dict[str, Any] = {}
        power: dict[str, float | None]
        if reading is not None:
            power = {"total": round(reading.total_act_power, 1),
                     **{p: round(reading.phase(i).act_power, 1) for i, p in enumerate(PHASE_NAMES)}}
            for i, p in enumerate(PHASE_NAMES):
                ph = reading.phase(i)
                phases[p] = {"voltage": round(ph.voltage, 1), "current": round(ph.current, 2),
                             "pf": round(ph.pf, 2), "freq": round(ph.freq, 2)}
            now = reading.measured_at
        else:
            power = {"total": None, "a": None, "b": None, "c": None}
            now = server_time
        view: dict[str, Any] = {"forecast": [], "model": None, "baselines": None,
                                "skill": None, "resolution": None}
        since = now - span
        dataset: list[tuple[float, float]] = []
        ranges: list[tuple[float, float, str]] = []
        backfill = None
        if self.forecast is not None:
            view.update(self.forecast.view(name, span))
            step = step_for(span, view["resolution"])
            dataset = await self.forecast.history(name, since, step)
            ranges, backfill = self.forecast.backfill(name)
        history, parts = compose(dataset, list(meter.history), since, span, view["resolution"], ranges)
        return 200, {
            "now": now,
            "server_time": server_time,
            "meter": name,
            "meters": names,
            "power": power,
            "phases": phases,
            "energy_today": self.energy.today(meter),
            "health": meter_health(meter),
            "span": span,
            "history": _points(history),
            "history_parts": [part.to_json() for part in parts],
            "backfill": backfill,
            "forecast": _points(view["forecast"]),
            "resolution": view["resolution"],
            "model": view["model"],
            "baselines": view["baselines"],
            "skill": view["skill"],
            "forecasting": self.forecast is not None,
            "training": self.training(),
        }

    def train(self) -> tuple[int, dict[str, Any]]:
        if self.forecast is None:
            return 503, {"error": "forecasting is off (forecast.enabled: false)", "training": self.training()}
        if self.forecast.train_now() is None:
            return 409, {"error": "training is already running", "training": self.training()}
        return 202, {"training": self.training()}


def _json(request: IRequest, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, allow_nan=False).encode()


def _arg(request: IRequest, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    return values[0].decode("utf-8", "replace") if values else None


def _same_origin(request: IRequest) -> bool:
    """A POST from another site's page (CSRF) carries its Origin; refuse it."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
    return urlsplit(origin.decode("latin-1")).netloc.lower() == host


def install_routes(app: Klein, meters: MeterSet, clock: IReactorTime, days: DayLedger,
                   forecast: ForecastService | None = None) -> Dashboard:
    """``/ui``, ``/ui/<static file>``, ``/ui/power`` and ``POST /ui/train`` on ``app``."""
    dashboard = Dashboard(meters, clock, days, forecast)

    def static(name: str) -> Callable[[IRequest], bytes]:
        path = os.path.join(STATIC, name)

        def serve(request: IRequest) -> bytes:
            with open(path, "rb") as handle:
                body = handle.read()
            request.setHeader(b"content-type", FILES[name].encode())
            request.setHeader(b"cache-control", b"no-cache")
            request.setHeader(b"x-content-type-options", b"nosniff")
            if name == "index.html":
                href = base_href(request)
                request.setHeader(b"content-security-policy", CSP if href == "/" else CSP_INGRESS)
                request.setHeader(b"referrer-policy", b"no-referrer")
                body = with_base(body, href)
            return body

        return serve

    page = static("index.html")
    app.route("/ui", methods=["GET"], endpoint="ui_index", strict_slashes=False)(page)
    for name in FILES:
        app.route(f"/ui/{name}", methods=["GET"], endpoint=f"ui_{name}")(static(name))

    @app.route("/ui/power", methods=["GET"])
    def power(request: IRequest) -> bytes | Deferred[bytes]:
        span = DEFAULT_SPAN
        raw = _arg(request, b"span")
        if raw is not None:
            try:
                span = float(raw)
            except ValueError:
                return _json(request, 400, {"error": "span: expected seconds"})
            if span != span:  # NaN
                return _json(request, 400, {"error": "span: expected seconds"})
        d: Deferred[tuple[int, dict[str, Any]]] = ensureDeferred(
            dashboard.power(_arg(request, b"meter"), span))
        return d.addCallback(lambda answer: _json(request, *answer))

    @app.route("/ui/train", methods=["POST"])
    def train(request: IRequest) -> bytes:
        if not _same_origin(request):
            return _json(request, 403, {"error": "cross-origin request refused"})
        code, body = dashboard.train()
        return _json(request, code, body)

    return dashboard
