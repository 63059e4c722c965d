"""NotifyStatus / NotifyFullStatus building (pure).

The device sends notifications only to clients that sent a request with a
``src``. After such a client's first request it gets ``NotifyFullStatus``;
after that, ``NotifyStatus`` holds only the fields of ``em:0``/``emdata:0``
(or ``em1:N``/``em1data:N``) that changed since what that client was last
told, so a merge of the notifications onto the last status equals a fresh
``Shelly.GetStatus``.

What "changed" means (:func:`threshold`): the served values are already
rounded to the firmware's decimals (0.1 W, 0.001 A, 0.1 V, 0.01 pf), so by
default (``epsilon`` 0) any change a client could see is sent, at most once
per ``notify_interval``: Home Assistant then shows exactly what a poll would,
currents included. A positive ``epsilon`` is a deadband in watts for the
power fields (the real device's report threshold is 10 W or 5 %), and for
currents the current that carries that power at 230 V (energy counters
use it as Wh); voltage, pf and frequency are always sent when they change. The deadband is measured against
what the client was last told, so slow drift adds up and is sent once it
exceeds the deadband.

Nothing here modifies its arguments: a "known" state (what a client was last
told) can then be shared by every client that was told the same, and the
notifier diffs and encodes once per distinct state instead of once per client.
"""

from __future__ import annotations

from json.encoder import encode_basestring
from typing import Any

from meteremu.devices.shelly import jsonfmt

Status = dict[str, dict[str, Any]]


def _is_number(value: Any) -> bool:
    """int or float (subclasses too, e.g. numpy's float64), but not bool."""
    kind = type(value)
    return kind is float or kind is int or (kind is not bool and isinstance(value, int | float))


NOMINAL_VOLTAGE = 230.0
EXACT = ("voltage", "pf", "freq")  # notified whenever their served value changes


def threshold(key: str, epsilon: float) -> float:
    """How far the number at ``key`` may move unnoticed: see the module docstring."""
    if epsilon <= 0 or key.endswith(EXACT):
        return 0.0
    if key.endswith("current"):
        return epsilon / NOMINAL_VOLTAGE
    return epsilon  # watts (act/aprt power, totals) and watt-hours (emdata)


def changed_fields(old: dict[str, Any] | None, new: dict[str, Any], epsilon: float) -> dict[str, Any]:
    """Fields of ``new`` that differ from ``old`` (numbers: beyond :func:`threshold`).

    ``id`` is always carried when anything changed, as on the device.
    """
    if old is None:
        return dict(new)
    diff: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if before is _MISSING:
            diff[key] = value
        elif _is_number(value) and _is_number(before):
            if abs(value - before) > threshold(key, epsilon):
                diff[key] = value
        elif value != before:
            diff[key] = value
    if diff and "id" in new:
        diff = {"id": new["id"], **diff}
    return diff


def diff_status(known: Status, current: Status, epsilon: float) -> tuple[Status | None, Status]:
    """``(what changed per component, the new known state)``; ``known`` is left as is.

    The diff is None when a component *lost* a key (``errors`` once the meter
    is healthy again): a merge cannot delete a key, so the caller sends
    ``NotifyFullStatus`` instead, which clients take as a replacement. When
    nothing changed, the new known state is ``known`` itself.
    """
    out: Status = {}
    new_known: Status | None = None
    for component, value in current.items():
        before = known.get(component)
        if before is not None and not before.keys() <= value.keys():
            return None, known
        diff = changed_fields(before, value, epsilon)
        if diff:
            out[component] = diff
            if new_known is None:
                new_known = dict(known)
            new_known[component] = {**(before or {}), **diff}
    return out, known if new_known is None else new_known


def notification(device_id: str, dst: str, method: str, ts: float, params: dict[str, Any]) -> dict[str, Any]:
    return {"src": device_id, "dst": dst, "method": method, "params": {"ts": ts, **params}}


def params_json(ts: float, params: dict[str, Any]) -> str:
    """The JSON text of a notification's ``params`` (encoded once, sent to many)."""
    return jsonfmt.dumps({"ts": ts, **params})


def notification_bytes(device_id: str, dst: str, method: str, params_text: str) -> bytes:
    """``jsonfmt.dumpb(notification(...))`` around params already encoded by :func:`params_json`."""
    text = (f'{{"src":{encode_basestring(device_id)},"dst":{encode_basestring(dst)},'
            f'"method":{encode_basestring(method)},"params":{params_text}}}')
    return text.encode("utf-8", "backslashreplace")


_MISSING = object()
