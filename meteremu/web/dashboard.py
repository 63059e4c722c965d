"""The dashboard: ``/ui`` (static page), ``GET /ui/power`` (JSON), ``POST /ui/train``.

The page is three hand-written static files in ``meteremu/web/static`` (no
build step, no CDN: it works offline on a LAN) that poll ``/ui/power`` every
few seconds and ``/admin/overview`` for the battery clients.

``/ui/power`` works without forecasting: history then comes from the Meter's
own ring of readings, and ``model``/``baselines``/``skill`` are null,
``forecast`` is ``[]``. With forecasting on, history is the dataset's buckets
(``resolution`` wide) and the forecast continues it. Timestamps are epoch
seconds on the *source's* clock (a simulator's fast clock included); ``now``
is the newest reading's timestamp, ``server_time`` the server's clock, which
``last_seen`` in ``/admin/overview`` uses.

Energy today: the Meter's lifetime counters minus their value at the first
reading of the local day (by the reading's timestamp); that day-start value is
kept in the store, so a restart in the afternoon still counts from midnight
(the first reading after midnight may carry the few seconds before it).

This module never imports numpy or scikit-learn; the forecast service is
passed in (or ``None``) and used through a few methods only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from typing import Any
from urllib.parse import urlsplit

from klein import Klein
from twisted.web.iweb import IRequest

from meteremu.meter import Meter
from meteremu.reading import PHASE_NAMES, Reading
from meteremu.web.ops import meter_health

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CSP = (b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

DEFAULT_SPAN = 3600.0
MIN_SPAN = 60.0
MAX_SPAN = 6 * 3600.0
MAX_POINTS = 720  # history points sent at most (means of equal time slices beyond)


def downsample(points: Sequence[tuple[float, float]], max_points: int) -> list[tuple[float, float]]:
    """Pure: at most ``max_points`` points, each the mean (time and value) of an equal time slice."""
    if len(points) <= max_points or max_points < 1:
        return list(points)
    first, last = points[0][0], points[-1][0]
    width = (last - first) / max_points or 1.0
    out: list[tuple[float, float]] = []
    slot, t_sum, v_sum, count = None, 0.0, 0.0, 0
    for t, v in points:
        index = min(max_points - 1, int((t - first) / width))
        if index != slot and count:
            out.append((t_sum / count, v_sum / count))
            t_sum = v_sum = 0.0
            count = 0
        slot = index
        t_sum += t
        v_sum += v
        count += 1
    if count:
        out.append((t_sum / count, v_sum / count))
    return out


def _day(ts: float, tz: tzinfo | None) -> str:
    return datetime.fromtimestamp(ts, tz).date().isoformat()


class EnergyToday:
    """Per meter: the energy counters at the start of the local day (by reading time)."""

    def __init__(self, meters: Any, store: Any = None, tz: tzinfo | None = None) -> None:
        self.store = store
        self.tz = tz
        self.days: dict[str, tuple[str, list[tuple[float, float]]]] = {}
        meters.subscribe(self._added, self._removed)

    @staticmethod
    def _key(name: str) -> str:
        return f"meter:{name}:energy_day_start"

    def _added(self, meter: Meter) -> None:
        name = meter.name
        if self.store is not None:
            saved = self.store.get(self._key(name))
            if isinstance(saved, dict) and isinstance(saved.get("day"), str) and isinstance(saved.get("start"), list):
                try:
                    self.days[name] = (saved["day"], [(float(i), float(e)) for i, e in saved["start"]])
                except (TypeError, ValueError):
                    pass
            self.store.register(self._key(name), lambda name=name: self._snapshot(name))
        meter.add_listener(self._on_reading)

    def _removed(self, meter: Meter) -> None:
        meter.remove_listener(self._on_reading)

    def _snapshot(self, name: str) -> Any:
        entry = self.days.get(name)
        if entry is None:
            return None
        return {"day": entry[0], "start": [list(pair) for pair in entry[1]]}

    @staticmethod
    def _counters(meter: Meter) -> list[tuple[float, float]]:
        return [(p.import_wh, p.export_wh) for p in meter.energy.phases]

    def _on_reading(self, meter: Meter, reading: Reading) -> None:
        day = _day(reading.measured_at, self.tz)
        entry = self.days.get(meter.name)
        if entry is None or entry[0] != day:
            self.days[meter.name] = (day, self._counters(meter))

    def today(self, meter: Meter) -> dict[str, Any]:
        """``{"day", "a": {"import_wh", "export_wh"}, …, "total": {…}}``."""
        now = self._counters(meter)
        entry = self.days.get(meter.name)
        start = entry[1] if entry is not None else now
        out: dict[str, Any] = {"day": entry[0] if entry is not None else None}
        total_i = total_e = 0.0
        for index, name in enumerate(PHASE_NAMES):
            if index < len(now):
                base = start[index] if index < len(start) else (0.0, 0.0)
                imp = max(0.0, now[index][0] - base[0])
                exp = max(0.0, now[index][1] - base[1])
            else:
                imp = exp = 0.0
            total_i += imp
            total_e += exp
            out[name] = {"import_wh": round(imp, 2), "export_wh": round(exp, 2)}
        out["total"] = {"import_wh": round(total_i, 2), "export_wh": round(total_e, 2)}
        return out


def _points(points: Sequence[tuple[float, float]]) -> list[list[float]]:
    return [[round(t, 3), round(v, 1)] for t, v in points]


class Dashboard:
    """Builds the ``/ui/power`` answer (pure apart from reading the meters' state)."""

    def __init__(self, meters: Any, clock: Any, store: Any = None, forecast: Any = None,
                 tz: tzinfo | None = None) -> None:
        self.meters = meters
        self.clock = clock
        self.forecast = forecast
        self.energy = EnergyToday(meters, store, tz)

    def training(self) -> dict[str, Any]:
        if self.forecast is None:
            return {"state": "idle", "progress": 0.0, "enabled": False, "message": "forecasting is off"}
        return {**self.forecast.training_status(), "enabled": True}

    def power(self, name: str | None, span: float = DEFAULT_SPAN) -> tuple[int, dict[str, Any]]:
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
        view: dict[str, Any] = {"history": [], "forecast": [], "model": None, "baselines": None,
                                "skill": None, "resolution": None}
        if self.forecast is not None:
            view.update(self.forecast.view(name, span))
        history = view["history"]
        if not history:
            since = now - span
            history = [p for p in meter.history if p[0] > since]
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
            "history": _points(downsample(history, MAX_POINTS)),
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


def install_routes(app: Klein, meters: Any, clock: Any, store: Any = None, forecast: Any = None,
                   tz: tzinfo | None = None) -> Dashboard:
    """``/ui``, ``/ui/<static file>``, ``/ui/power`` and ``POST /ui/train`` on ``app``."""
    dashboard = Dashboard(meters, clock, store, forecast, tz)

    def static(name: str) -> Callable[[IRequest], bytes]:
        path = os.path.join(STATIC, name)

        def serve(request: IRequest) -> bytes:
            with open(path, "rb") as handle:
                body = handle.read()
            request.setHeader(b"content-type", FILES[name].encode())
            request.setHeader(b"cache-control", b"no-cache")
            request.setHeader(b"x-content-type-options", b"nosniff")
            if name == "index.html":
                request.setHeader(b"content-security-policy", CSP)
                request.setHeader(b"referrer-policy", b"no-referrer")
            return body

        return serve

    page = static("index.html")
    app.route("/ui", methods=["GET"], endpoint="ui_index", strict_slashes=False)(page)
    for name in FILES:
        app.route(f"/ui/{name}", methods=["GET"], endpoint=f"ui_{name}")(static(name))

    @app.route("/ui/power", methods=["GET"])
    def power(request: IRequest) -> bytes:
        span = DEFAULT_SPAN
        raw = _arg(request, b"span")
        if raw is not None:
            try:
                span = float(raw)
            except ValueError:
                return _json(request, 400, {"error": "span: expected seconds"})
            if span != span:  # NaN
                return _json(request, 400, {"error": "span: expected seconds"})
        code, body = dashboard.power(_arg(request, b"meter"), span)
        return _json(request, code, body)

    @app.route("/ui/train", methods=["POST"])
    def train(request: IRequest) -> bytes:
        if not _same_origin(request):
            return _json(request, 403, {"error": "cross-origin request refused"})
        code, body = dashboard.train()
        return _json(request, code, body)

    return dashboard
