"""A real Shelly's Gen2+ status → Readings, and its digest authentication. Pure.

``Shelly.GetStatus`` (HTTP ``/rpc/Shelly.GetStatus``, or merged from
WebSocket ``NotifyStatus`` deltas) has one object per component:

* ``em:N`` (Pro 3EM, triphase profile): ``a/b/c_act_power`` (W, signed +
  import), ``*_voltage``, ``*_current``, ``*_pf``, ``*_freq``; its lifetime
  counters in ``emdata:N`` (``a_total_act_energy`` / ``a_total_act_ret_energy``, Wh);
* ``em1:N`` (Pro EM, EM gen3, a Pro 3EM in monophase profile):
  ``act_power``, ``voltage``, ``current``, ``pf``, ``freq``; counters in
  ``em1data:N`` (``total_act_energy`` / ``total_act_ret_energy``);
* ``pm1:N`` and ``switch:N`` (Plus/Pro 1PM, 2PM, PM Mini…): ``apower``,
  ``voltage``, ``current``, ``pf``, ``freq``; counters ``aenergy.total`` /
  ``ret_aenergy.total``.

Several single-phase channels (``em1:0``, ``em1:1``, ``em1:2``) make phases
A, B, C. The counters are the device's own (lifetime, never integrated
here). Every number is checked (:func:`meteremu.sources.jsonfields.range_problem`):
a missing power, a non-number, NaN or an impossible value refuses the status.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from meteremu.reading import Reading
from meteremu.sources.jsonfields import DEFAULT_MAX_POWER, ValueProblem, range_problem
from meteremu.sources.values import (
    CURRENT,
    ENERGY,
    FREQUENCY,
    POWER,
    POWER_FACTOR,
    VOLTAGE,
    build_phase,
)

AUTO_ORDER = ("em:0", "em1:0", "pm1:0", "switch:0")
"""The components ``channels: auto`` looks for, in this order."""

KINDS = ("em", "em1", "pm1", "switch")


def component_problem(name: str) -> str | None:
    """Why ``name`` is not a component this source reads (None if it is)."""
    kind, sep, index = name.partition(":")
    if not sep or kind not in KINDS or not index.isdigit() or int(index) > 15:
        return f"a component like em:0, em1:0, pm1:0 or switch:0; got {name!r}"
    return None


def choose_channels(status: dict[str, Any], configured: Sequence[str]) -> tuple[str, ...]:
    """The components to read: the configured ones, or the first of :data:`AUTO_ORDER` present."""
    if configured:
        missing = [c for c in configured if c not in status]
        if missing:
            raise ValueProblem(f"the device has no {missing[0]} (it has "
                               f"{', '.join(k for k in status if ':' in k) or 'no components'})")
        return tuple(configured)
    for name in AUTO_ORDER:
        if name in status:
            return (name,)
    raise ValueProblem("the device has no em, em1, pm1 or switch component with power readings")


def _number(obj: Any, key: str, kind: str, where: str, max_power: float, required: bool = False) -> float | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    if value is None:
        if required:
            raise ValueProblem(f"{where}.{key} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueProblem(f"{where}.{key}: {str(value)[:40]!r} is not a number")
    if isinstance(value, Decimal) and (not value.is_finite() or abs(value.adjusted()) > 30):
        raise ValueProblem(f"{where}.{key}: {str(value)[:40]!r} is out of range")
    number = float(value)
    if not math.isfinite(number):
        raise ValueProblem(f"{where}.{key}: not a finite number")
    problem = range_problem(kind, number, max_power)
    if problem:
        raise ValueProblem(f"{where}.{key}: {number:g} {problem}")
    return number


def _phase(obj: Any, where: str, prefix: str, power_key: str, max_power: float,
           invert: bool) -> Any:
    if not isinstance(obj, dict):
        raise ValueProblem(f"{where} is not an object")
    power = _number(obj, power_key, POWER, where, max_power, required=True)
    assert power is not None
    return build_phase(-power if invert else power, _number(obj, f"{prefix}voltage", VOLTAGE, where, max_power),
                       _number(obj, f"{prefix}current", CURRENT, where, max_power),
                       _number(obj, f"{prefix}pf", POWER_FACTOR, where, max_power),
                       _number(obj, f"{prefix}freq", FREQUENCY, where, max_power))


def _counters(obj: Any, where: str, imp: str, exp: str, max_power: float) -> tuple[float, float] | None:
    """``(import, export)`` Wh, or None when the device does not report them."""
    if not isinstance(obj, dict):
        return None
    def total(key: str) -> float | None:
        node = obj.get(key)
        if isinstance(node, dict):  # aenergy: {"total": …}
            return _number(node, "total", ENERGY, f"{where}.{key}", max_power)
        return _number(obj, key, ENERGY, where, max_power)
    i, e = total(imp), total(exp)
    if i is None:
        return None
    return i, e or 0.0


def reading_of(status: Any, channels: Sequence[str], measured_at: float, invert: bool = False,
               max_power: float = DEFAULT_MAX_POWER) -> Reading:
    """The Reading of ``channels`` in a GetStatus result; :class:`ValueProblem` naming what is wrong."""
    if not isinstance(status, dict):
        raise ValueProblem("the status is not an object")
    chosen = choose_channels(status, channels)
    if chosen[0].startswith("em:"):
        name = chosen[0]
        em = status[name]
        phases = tuple(_phase(em, name, f"{p}_", f"{p}_act_power", max_power, invert) for p in "abc")
        data_name = "emdata:" + name.partition(":")[2]
        data = status.get(data_name)
        energy = None
        if isinstance(data, dict):
            pairs = [_counters(data, data_name, f"{p}_total_act_energy", f"{p}_total_act_ret_energy", max_power)
                     for p in "abc"]
            if all(pair is not None for pair in pairs):
                energy = tuple(pair for pair in pairs if pair is not None)
        if invert and energy is not None:
            energy = tuple((e, i) for i, e in energy)
        return Reading(phases=phases, measured_at=measured_at, energy=energy)
    phases_list = []
    energies: list[tuple[float, float] | None] = []
    for name in chosen[:3]:
        kind, _, index = name.partition(":")
        obj = status[name]
        if kind == "em1":
            phases_list.append(_phase(obj, name, "", "act_power", max_power, invert))
            energies.append(_counters(status.get(f"em1data:{index}"), f"em1data:{index}", "total_act_energy",
                                      "total_act_ret_energy", max_power))
        else:
            phases_list.append(_phase(obj, name, "", "apower", max_power, invert))
            energies.append(_counters(obj, name, "aenergy", "ret_aenergy", max_power))
    energy = tuple(e for e in energies if e is not None) if all(e is not None for e in energies) else None
    if invert and energy is not None:
        energy = tuple((e, i) for i, e in energy)
    return Reading(phases=tuple(phases_list), measured_at=measured_at, energy=energy)


def merge_status(status: dict[str, Any], delta: Any) -> dict[str, Any]:
    """A ``NotifyStatus`` delta merged into a status (components updated key by key)."""
    if not isinstance(delta, dict):
        return status
    for key, value in delta.items():
        if key == "ts":
            continue
        current = status.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged = dict(current)
            merged.update(value)
            status[key] = merged
        else:
            status[key] = value
    return status


# -- digest authentication (Gen2: SHA-256, user "admin") ------------------------------------------


def digest_header(method: str, uri: str, challenge: dict[str, str], username: str, password: str,
                  nc: int, cnonce: str) -> str:
    """``Authorization: Digest …`` for a Gen2 device's challenge (RFC 7616; SHA-256 or MD5)."""
    algorithm = challenge.get("algorithm", "MD5")
    name = "sha256" if algorithm.upper().startswith("SHA-256") else "md5"

    def h(text: str) -> str:
        return hashlib.new(name, text.encode()).hexdigest()

    realm, nonce = challenge.get("realm", ""), challenge.get("nonce", "")
    ha1 = h(f"{username}:{realm}:{password}")
    ha2 = h(f"{method}:{uri}")
    ncv = f"{nc:08x}"
    response = h(f"{ha1}:{nonce}:{ncv}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", qop=auth, nc={ncv}, cnonce="{cnonce}", algorithm={algorithm}')


def ws_auth(challenge: dict[str, Any], username: str, password: str, cnonce: str) -> dict[str, Any]:
    """The ``auth`` object of a WebSocket RPC frame for a 401 challenge (Gen2 RPC over WebSocket)."""
    realm, nonce = str(challenge.get("realm", "")), challenge.get("nonce", "")
    nc = int(challenge.get("nc", 1) or 1)
    ha1 = hashlib.sha256(f"{username}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.sha256(b"dummy_method:dummy_uri").hexdigest()
    response = hashlib.sha256(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return {"realm": realm, "username": username, "nonce": nonce, "cnonce": cnonce, "response": response,
            "algorithm": "SHA-256"}


# -- Gen1 (3EM, EM, 1PM, Plug S…): GET /status ---------------------------------------------------

GEN1_KINDS = ("emeter", "meter")


def gen1_channel_problem(name: str) -> str | None:
    kind, sep, index = name.partition(":")
    if not sep or kind not in GEN1_KINDS or not index.isdigit() or int(index) > 3:
        return f"a Gen1 channel like emeter:0 or meter:0; got {name!r}"
    return None


def gen1_channels(status: dict[str, Any], configured: Sequence[str]) -> tuple[str, ...]:
    """The configured channels, or: every emeter of a 3EM (three), emeter:0 of an EM, meter:0 of a PM."""
    emeters, meters = status.get("emeters"), status.get("meters")
    count = {"emeter": len(emeters) if isinstance(emeters, list) else 0,
             "meter": len(meters) if isinstance(meters, list) else 0}
    if configured:
        for name in configured:
            kind, _, index = name.partition(":")
            if int(index) >= count[kind]:
                raise ValueProblem(f"the device has no {name} ({count['emeter']} emeters, {count['meter']} meters)")
        return tuple(configured)
    if count["emeter"] == 3:
        return ("emeter:0", "emeter:1", "emeter:2")
    if count["emeter"]:
        return ("emeter:0",)
    if count["meter"]:
        return ("meter:0",)
    raise ValueProblem("the device's /status has no emeters or meters")


def gen1_reading_of(status: Any, channels: Sequence[str], measured_at: float, invert: bool = False,
                    max_power: float = DEFAULT_MAX_POWER) -> Reading:
    """A Gen1 ``/status`` → Reading. ``emeters``: W, V, A, pf and Wh counters (``total``,
    ``total_returned``); ``meters``: W and ``total`` in watt-minutes (÷ 60), no export counter.
    ``is_valid: false`` (the device's own measurement fault) refuses the status."""
    if not isinstance(status, dict):
        raise ValueProblem("the status is not an object")
    phases = []
    energies: list[tuple[float, float] | None] = []
    for name in gen1_channels(status, channels)[:3]:
        kind, _, index = name.partition(":")
        obj = status[f"{kind}s"][int(index)]
        if not isinstance(obj, dict):
            raise ValueProblem(f"{name} is not an object")
        if obj.get("is_valid") is False:
            raise ValueProblem(f"{name}: the device marks its reading invalid (is_valid: false)")
        phases.append(_phase(obj, name, "", "power", max_power, invert))
        if kind == "emeter":
            energies.append(_counters(obj, name, "total", "total_returned", max_power))
        else:
            minutes = _number(obj, "total", ENERGY, name, max_power * 60)
            energies.append((minutes / 60.0, 0.0) if minutes is not None else None)
    energy = tuple(e for e in energies if e is not None) if all(e is not None for e in energies) else None
    if invert and energy is not None:
        energy = tuple((e, i) for i, e in energy)
    return Reading(phases=tuple(phases), measured_at=measured_at, energy=energy)
