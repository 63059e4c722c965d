"""The EcoTracker's ``/v1/json`` document, as pure functions (no I/O, clock passed in).

Keys and units follow everHome's local API (batteries.md §3.3): ``power``
and ``powerAvg`` in whole watts (negative when exporting), ``powerPhase1..3``
in whole watts, ``energyCounterIn``/``energyCounterOut`` in Wh with one
decimal, in that order. Optional keys are left out rather than sent as
``null`` (the tariff counters: meteremu has no tariffs), as the device does.
"""

from __future__ import annotations

import json
import math
from collections import deque
from typing import Any

from meteremu.devices.stale import Unavailable
from meteremu.reading import Reading


class PowerWindow:
    """Total power samples of the last ``window`` seconds, for ``powerAvg``.

    The mean is over the readings that arrived in the window (a source's
    samples are evenly spaced, so this is the time mean the device reports).
    Bounded: at most ``max_samples`` are kept.
    """

    def __init__(self, window: float, max_samples: int = 100_000) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._sum = 0.0

    def add(self, now: float, watts: float) -> None:
        if not math.isfinite(watts):
            return
        if len(self._samples) == self._samples.maxlen:
            self._sum -= self._samples[0][1]
        self._samples.append((now, watts))
        self._sum += watts
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._samples and now - self._samples[0][0] > self.window:
            self._sum -= self._samples.popleft()[1]
        if not self._samples:
            self._sum = 0.0  # no float drift carried into the next window

    def mean(self, now: float) -> float | None:
        self._expire(now)
        if not self._samples:
            return None
        return self._sum / len(self._samples)


def _watts(value: float) -> int:
    if not math.isfinite(value):
        raise Unavailable("the meter's power is not a finite number")
    return int(round(value))


def _wh(value: float) -> float:
    if not math.isfinite(value):
        raise Unavailable("the meter's energy counter is not a finite number")
    return round(value, 1)


def document(reading: Reading, average: float | None, import_wh: float, export_wh: float,
             phases: bool = True) -> dict[str, Any]:
    """The ``/v1/json`` body; ``average`` ``None`` (no reading in the window) means the current power."""
    power = reading.total_act_power
    body: dict[str, Any] = {"power": _watts(power),
                            "powerAvg": _watts(power if average is None else average)}
    if phases:
        for index in range(3):
            body[f"powerPhase{index + 1}"] = _watts(reading.phase(index).act_power)
    body["energyCounterIn"] = _wh(import_wh)
    body["energyCounterOut"] = _wh(export_wh)
    return body


def dumpb(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
