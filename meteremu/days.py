"""Local days: each meter's counters at local midnight, kept in one place.

"Energy today" on the dashboard and the daily summary the InfluxDB exporter
writes are the same question: how much did the lifetime counters gain since
local midnight? :class:`DayLedger` answers it once for everyone. Per meter it
keeps a :class:`DayStart` (the day, when the snapshot was taken, the
counters, and whether it was taken at midnight), saved in the store at once
so a restart in the afternoon still counts from midnight. Days are judged on
the wall clock (:func:`meteremu.clocks.wall`) in the configured time zone
(``timezone:``, default the system's); a check at least every
:data:`MAX_WAKE` seconds notices a clock step past midnight.

When a day ends, or a restart finds a stored earlier day, subscribers are
told ``(meter, start, end counters, complete)``; ``complete`` means both
snapshots were taken at their midnights (within :data:`MIDNIGHT_TOLERANCE`).

The date arithmetic is pure (:func:`local_date`, :func:`midnight`, …): DST
days of 23 and 25 hours and midnights that do not exist are handled there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall

from meteremu.clocks import wall
from meteremu.interfaces import IReactorTime, Values
from meteremu.logs import logger
from meteremu.meter import Meter
from meteremu.meterset import MeterSet

log = logger(__name__)

Counters = tuple[tuple[float, float], ...]
DayEnd = Callable[[Meter, "DayStart", Counters, bool], None]

MIDNIGHT_TOLERANCE = 60.0  # a snapshot this close after midnight counts as "at midnight"
MAX_WAKE = 600.0  # look at the date at least this often (a clock stepped by NTP, a Pi without RTC)
# Where earlier versions kept a day start: the InfluxDB exporter's and the dashboard's.
LEGACY_KEYS = ("influx:daystart:{name}", "meter:{name}:energy_day_start")


def store_key(meter_name: str) -> str:
    return f"meter:{meter_name}:day_start"


def counters_of(meter: Meter) -> Counters:
    """The meter's lifetime ``(import_wh, export_wh)`` per phase, now."""
    return tuple((c.import_wh, c.export_wh) for c in meter.energy.phases)


def local_date(t: float, tz: tzinfo | None) -> date:
    """The local date at epoch ``t`` (``tz=None``: the system's local time)."""
    return datetime.fromtimestamp(t, tz).date()


def midnight(day: date, tz: tzinfo | None) -> float:
    """Epoch of the first instant of ``day`` (23 h and 25 h days included).

    Where midnight does not exist (a DST jump at 00:00) this is the first
    instant after the gap.
    """
    return datetime.combine(day, time(0), tz).timestamp()


def next_midnight(t: float, tz: tzinfo | None) -> float:
    return midnight(local_date(t, tz) + timedelta(days=1), tz)


@dataclass(frozen=True)
class DayStart:
    """The counters at the start of a local day (kept in the store)."""

    day: date
    at: float
    counters: Counters
    complete: bool  # taken at that day's midnight (within the tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "at": self.at,
                "counters": [list(c) for c in self.counters], "complete": self.complete}

    @classmethod
    def from_dict(cls, data: Any) -> DayStart | None:
        """Parse a stored snapshot; None if it is missing or malformed."""
        if not isinstance(data, dict):
            return None
        try:
            counters = tuple((float(c[0]), float(c[1])) for c in data["counters"])
            if not all(math.isfinite(v) for c in counters for v in c):
                return None
            return cls(date.fromisoformat(data["day"]), float(data["at"]), counters, bool(data.get("complete")))
        except (KeyError, TypeError, ValueError, IndexError):
            return None


def legacy_day_start(data: Any, tz: tzinfo | None) -> DayStart | None:
    """A day start in an earlier version's format (the dashboard's ``{day, start}``), or None."""
    start = DayStart.from_dict(data)
    if start is not None or not isinstance(data, dict):
        return start
    try:
        day = date.fromisoformat(data["day"])
        counters = tuple((float(i), float(e)) for i, e in data["start"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for c in counters for v in c):
        return None
    return DayStart(day, midnight(day, tz), counters, False)


def take_day_start(t: float, counters: Counters, tz: tzinfo | None) -> DayStart:
    """A snapshot now; ``complete`` when now is within the tolerance after midnight."""
    day = local_date(t, tz)
    return DayStart(day, t, counters, 0 <= t - midnight(day, tz) <= MIDNIGHT_TOLERANCE)


def since(start: DayStart | None, now: Counters) -> Counters:
    """What each phase's counters gained since ``start`` (never below 0)."""
    if start is None:
        return tuple((0.0, 0.0) for _ in now)
    base = start.counters
    return tuple((max(0.0, imp - (base[i][0] if i < len(base) else 0.0)),
                  max(0.0, exp - (base[i][1] if i < len(base) else 0.0))) for i, (imp, exp) in enumerate(now))


class DayLedger(Service):
    """Each meter's :class:`DayStart` for today; tells subscribers when a day ends."""

    def __init__(self, meters: MeterSet, store: Values | None, clock: IReactorTime,
                 tz: tzinfo | None = None) -> None:
        self.meters = meters
        self.store = store
        self.clock = clock
        self.tz = tz
        self.starts: dict[str, DayStart] = {}
        self._subscribers: list[DayEnd] = []
        self._followed: dict[str, Meter] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._wake: IDelayedCall | None = None

    # -- who wants to know --------------------------------------------------------------
    def subscribe(self, on_day_end: DayEnd) -> Callable[[], None]:
        """Call ``on_day_end(meter, start, end, complete)`` for every day that ends."""
        self._subscribers.append(on_day_end)
        return lambda: self._subscribers.remove(on_day_end) if on_day_end in self._subscribers else None

    def start_of_day(self, meter: Meter) -> DayStart | None:
        """Today's snapshot of ``meter`` (taken when it was added, or at midnight)."""
        return self.starts.get(meter.name)

    def today(self, meter: Meter) -> Counters:
        """What each phase's counters gained since the start of today."""
        return since(self.start_of_day(meter), counters_of(meter))

    @property
    def next_wake(self) -> float | None:
        """When the ledger looks at the date next (None while stopped)."""
        return self._wake.getTime() if self._wake is not None and self._wake.active() else None

    # -- lifecycle ------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self.meters.subscribe(self._added, self._removed)
        self._schedule()

    def stopService(self) -> None:
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._followed.clear()
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake = None

    # -- meters ---------------------------------------------------------------------------
    def _added(self, meter: Meter) -> None:
        self._followed[meter.name] = meter
        now = wall(self.clock)
        today = local_date(now, self.tz)
        stored = self._stored(meter.name)
        if stored is not None and stored.day == today:
            self.starts[meter.name] = stored
            return
        if stored is not None and stored.day < today:
            # The counters were restored from the store: what they gained since
            # the snapshot was counted on that day, before the stop.
            self._ended(meter, stored, counters_of(meter), False)
        elif stored is not None:
            log.warn("the stored day start of {meter} is in the future ({day}); starting a new one",
                     meter=meter.name, day=stored.day.isoformat())
        self._put(meter, take_day_start(now, counters_of(meter), self.tz))

    def _removed(self, meter: Meter) -> None:
        self._followed.pop(meter.name, None)
        self.starts.pop(meter.name, None)

    def _stored(self, name: str) -> DayStart | None:
        if self.store is None:
            return None
        raw = self.store.get(store_key(name))
        start = DayStart.from_dict(raw)
        if start is None and raw is not None:
            report = getattr(self.store, "report", None)
            if report is not None:
                report(store_key(name), "was not a day start; today counts from now")
        if start is None and raw is None:
            for legacy in LEGACY_KEYS:
                start = legacy_day_start(self.store.get(legacy.format(name=name)), self.tz)
                if start is not None:
                    break
        return start

    def _put(self, meter: Meter, start: DayStart) -> None:
        self.starts[meter.name] = start
        if self.store is not None:
            self.store.put(store_key(meter.name), start.to_dict())

    def _ended(self, meter: Meter, start: DayStart, end: Counters, complete: bool) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(meter, start, end, complete)
            except Exception:
                log.failure("a subscriber failed on the end of {day} for {meter}",
                            day=start.day.isoformat(), meter=meter.name)

    # -- midnight ---------------------------------------------------------------------------
    def _schedule(self) -> None:
        now = wall(self.clock)  # the date is the wall clock's; the wait runs on the steady one
        delay = min(max(0.0, next_midnight(now, self.tz) - now), MAX_WAKE)
        self._wake = self.clock.callLater(delay, self._on_wake)

    def _on_wake(self) -> None:
        self._wake = None
        try:
            self.roll_over()
        except Exception:
            log.failure("the end of the day could not be handled")
        if self.running:
            self._schedule()

    def roll_over(self) -> None:
        """If the local date changed: end each meter's day and start a new one."""
        now = wall(self.clock)
        today = local_date(now, self.tz)
        at_midnight = 0 <= now - midnight(today, self.tz) <= MIDNIGHT_TOLERANCE
        for name, meter in list(self._followed.items()):
            start = self.starts.get(name)
            if start is not None and start.day >= today:
                continue  # the same day, or the wall clock went back: wait for the day to come again
            end = counters_of(meter)
            if start is not None:
                complete = start.complete and at_midnight and today == start.day + timedelta(days=1)
                self._ended(meter, start, end, complete)
            self._put(meter, DayStart(today, now, end, at_midnight))
