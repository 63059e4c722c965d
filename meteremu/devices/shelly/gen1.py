"""The Shelly gen1 endpoints on the Pro 3EM: ``/status``, ``/emeter/<n>``, ``/settings``.

A real Pro 3EM does not serve them, but batteries paired with a gen1 3EM
(Hoymiles, some Anker Solix, the Indielux Stromwächter) still ask, and a
uni-meter comment of 2026-09-06 says Hoymiles pairing fails for some users
without them (batteries.md §3.2): serving them is cheap insurance, on by
default (``gen1_endpoints: false`` turns them off).

The builders are pure: meter state in, the gen1 3EM's objects out (keys and
meaning of the 3EM's ``/status`` and ``/emeter/<n>``: ``power`` W,
``reactive`` var, ``pf``, ``current`` A, ``voltage`` V, ``is_valid``,
``total``/``total_returned`` Wh; a real 3EM prints power, pf, current and
voltage with two decimals and the totals with one, e.g. ``"voltage":236.27``,
so plain JSON of rounded floats, not the Gen2 fixed decimals). Under ``on_stale: error`` a stale meter's
emeters read ``is_valid: false`` with null values in ``/status`` (which
still answers, as ``Shelly.GetStatus`` does) and ``/emeter/<n>`` answers 503.
What the emulator cannot know is not made up: Wi-Fi reads as not connected
(meteremu is wired), as in ``Wifi.GetStatus``.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from meteremu.clocks import wall
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.identity import Identity
from meteremu.devices.shelly.rpc import CallContext, RpcError
from meteremu.energy import EnergyCounters
from meteremu.reading import Reading

JSON = b"application/json"
EMETERS = 3


def emeter(reading: Reading | None, energy: EnergyCounters, index: int, scale: float = 1.0) -> dict[str, Any]:
    """One gen1 emeter; ``reading`` ``None`` (stale under ``error``) gives nulls and ``is_valid: false``."""
    counter = energy.phases[index] if index < len(energy.phases) else None
    totals = {"total": round(counter.import_wh if counter else 0.0, 1),
              "total_returned": round(counter.export_wh if counter else 0.0, 1)}
    if reading is None:
        return {"power": None, "reactive": None, "pf": None, "current": None, "voltage": None,
                "is_valid": False, **totals}
    p = reading.phase(index)
    active, apparent = p.act_power * scale, p.aprt_power * scale
    reactive = math.sqrt(max(apparent * apparent - active * active, 0.0)) if math.isfinite(apparent) else 0.0
    return {"power": round(active, 2), "reactive": round(reactive, 2), "pf": round(p.pf, 2),
            "current": round(p.current * scale, 2), "voltage": round(p.voltage, 2), "is_valid": True, **totals}


def status(ident: Identity, reading: Reading | None, energy: EnergyCounters, scale: float,
           now: float, uptime: float) -> dict[str, Any]:
    """``GET /status`` (the gen1 3EM's keys; device resources as ``Sys.GetStatus`` reports them)."""
    emeters = [emeter(reading, energy, i, scale) for i in range(EMETERS)]
    total = sum(e["power"] for e in emeters) if reading is not None else None
    return {
        "wifi_sta": {"connected": False, "ssid": None, "ip": None, "rssi": 0},
        "cloud": {"enabled": False, "connected": False},
        "mqtt": {"connected": False},
        "time": time.strftime("%H:%M", time.localtime(now)), "unixtime": int(now), "serial": 1,
        "has_update": False, "mac": ident.mac, "relays": [], "emeters": emeters,
        "total_power": None if total is None else round(total, 2),
        "fs_mounted": True,
        "update": {"status": "idle", "has_update": False, "new_version": ident.fw_id,
                   "old_version": ident.fw_id},
        "ram_total": 247524, "ram_free": 113080, "fs_size": 524288, "fs_free": 180224,
        "uptime": int(uptime),
    }


def settings(ident: Identity) -> dict[str, Any]:
    """``GET /settings`` (as gen1 clients read a Pro 3EM's: type, MAC, hostname, meters)."""
    return {
        "device": {"type": f"{ident.model}120", "mac": ident.mac, "hostname": ident.device_id,
                   "num_outputs": 0, "num_meters": EMETERS},
        "login": {"enabled": False, "unprotected": False, "username": "admin"},
        "fw": ident.fw_id, "discoverable": True, "cloud": {"enabled": False, "connected": False},
        "name": ident.name,
    }


def install_routes(app: Klein, device: ShellyDevice) -> None:
    """Add the gen1 routes to the device's app."""

    def context(request: IRequest) -> CallContext:
        agent = request.getHeader(b"user-agent")
        return CallContext("http", getattr(request.getClientAddress(), "host", None), None,
                           getattr(request.getHost(), "host", None),
                           agent.decode("latin-1") if agent else None)

    def serve(request: IRequest, path: str) -> tuple[Reading | None, float, str | None]:
        """Count the poll, then the reading (``None`` when stale under ``error``) or a refusal."""
        ctx = context(request)
        try:
            device.clients.observe(path, ctx)
        except RpcError as err:
            return None, 1.0, err.message
        try:
            return device.serving_reading(), device.scale_for(ctx), None
        except RpcError:
            return None, 1.0, None

    def answer(request: IRequest, body: dict[str, Any], code: int = 200) -> bytes:
        request.setHeader(b"content-type", JSON)
        try:
            text = json.dumps(body, separators=(",", ":"), allow_nan=False)
        except ValueError:  # a non-finite value from the source: refuse, never serve it
            code, text = 503, json.dumps({"error": "the meter reading is not a finite number"})
        request.setResponseCode(code)
        return text.encode()

    @app.route("/status", methods=["GET"])
    def gen1_status(request: IRequest) -> bytes:
        reading, scale, refused = serve(request, "/status")
        if refused is not None:
            return answer(request, {"error": refused}, 429)
        now = wall(device.clock)
        ident = device.identity_for(context(request).peer)
        return answer(request, status(ident, reading, device.meter.energy, scale, now,
                                      device.clock.seconds() - device.started_at))

    @app.route("/emeter/<string:index>", methods=["GET"])
    def gen1_emeter(request: IRequest, index: str) -> bytes:
        if index not in ("0", "1", "2"):
            return answer(request, {"error": f"no emeter {index[:20]!r}; there are 0, 1 and 2"}, 404)
        reading, scale, refused = serve(request, "/emeter")
        if refused is not None:
            return answer(request, {"error": refused}, 429)
        if reading is None:
            return answer(request, {"error": f"Meter '{device.meter.name}' is not fresh"}, 503)
        return answer(request, emeter(reading, device.meter.energy, int(index), scale))

    @app.route("/settings", methods=["GET"])
    def gen1_settings(request: IRequest) -> bytes:
        return answer(request, settings(device.identity_for(context(request).peer)))
