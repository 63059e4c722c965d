"""NotifyStatus / NotifyFullStatus building (pure).

The device sends notifications only to clients that sent a request with a
``src``. After such a client's first request it gets ``NotifyFullStatus``;
after that, ``NotifyStatus`` holds only the fields of ``em:0``/``emdata:0``
(or ``em1:N``/``em1data:N``) that moved more than ``epsilon`` since what that
client was last told, so a merge of the notifications onto the last status
equals a fresh ``Shelly.GetStatus`` (within epsilon).
"""

from __future__ import annotations

from typing import Any


def changed_fields(old: dict[str, Any] | None, new: dict[str, Any], epsilon: float) -> dict[str, Any]:
    """Fields of ``new`` that differ from ``old`` (numbers: by more than epsilon).

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
            if abs(value - before) > epsilon:
                diff[key] = value
        elif value != before:
            diff[key] = value
    if diff and "id" in new:
        diff = {"id": new["id"], **diff}
    return diff


def status_diff(known: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]],
                epsilon: float) -> dict[str, dict[str, Any]] | None:
    """Per component, what changed since ``known``; updates ``known`` in place.

    Returns None when a component *lost* a key (``errors`` once the meter is
    healthy again): a merge cannot delete a key, so the caller sends
    ``NotifyFullStatus`` instead, which clients take as a replacement.
    """
    out: dict[str, dict[str, Any]] = {}
    for component, value in current.items():
        before = known.get(component)
        if before is not None and set(before) - set(value):
            return None
        diff = changed_fields(before, value, epsilon)
        if diff:
            out[component] = diff
            known[component] = {**(before or {}), **diff}
    return out


def notification(device_id: str, dst: str, method: str, ts: float, params: dict[str, Any]) -> dict[str, Any]:
    return {"src": device_id, "dst": dst, "method": method, "params": {"ts": ts, **params}}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_MISSING = object()
