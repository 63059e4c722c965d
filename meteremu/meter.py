"""The hub: one Meter per real meter, fed by exactly one source.

A Meter keeps the latest Reading, judges freshness on *arrival* (design.md
§4), integrates energy, keeps a short history ring of total power, counts the
source's successes and failures, and tells listeners about each new reading.
It has no I/O: the clock is injected so tests drive time with ``task.Clock``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from meteremu.energy import EnergyCounters
from meteremu.logs import logger
from meteremu.past import Past
from meteremu.reading import Reading

log = logger(__name__)


class IClock(Protocol):
    def seconds(self) -> float: ...


class Freshness(StrEnum):
    FRESH = "fresh"
    STALE = "stale"
    DOWN = "down"


@dataclass
class SourceStats:
    """What a source has done, for /healthz and /metrics."""

    fetches: int = 0
    failures: int = 0
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    @property
    def success_rate(self) -> float | None:
        total = self.fetches + self.failures
        return self.fetches / total if total else None


Listener = Callable[["Meter", Reading], None]
PastListener = Callable[["Meter", Past], None]

MIN_STALE_AFTER = 5.0
PUSH_STALE_AFTER = 60.0


def default_stale_after(interval: float | None, push: bool = False) -> float:
    """3x the poll interval, at least 5 s; 60 s for push sources (design.md §4)."""
    if push or interval is None:
        return PUSH_STALE_AFTER
    return max(MIN_STALE_AFTER, 3 * interval)


class Meter:
    """Latest state of one real meter."""

    def __init__(
        self,
        name: str,
        clock: IClock,
        stale_after: float = MIN_STALE_AFTER,
        source_type: str = "unknown",
        phases: int = 3,
        history_size: int = 3600,
    ) -> None:
        self.name = name
        self.clock = clock
        self.stale_after = stale_after
        self.source_type = source_type
        self.latest: Reading | None = None
        self.energy = EnergyCounters(phases)
        self.stats = SourceStats()
        self.history: deque[tuple[float, float]] = deque(maxlen=history_size)
        # Set by sources, read by exporters and /healthz:
        # - extra_labels: tags for Reading.extras keys, e.g. {"inverter.1234": {"array": "east"}}
        #   (extras keys are "<kind>.<name>": "inverter.<serial>", "circuit.<name>", "gas"…)
        # - details: what the source wants shown in /healthz (firmware, chosen mapping…);
        #   never secrets.
        self.extra_labels: dict[str, dict[str, str]] = {}
        # The last value of every extra, with its source timestamp: extras a
        # source reports only now and then (an inverter's watts) stay visible.
        self.extras: dict[str, tuple[float, float]] = {}
        self.details: dict[str, object] = {}
        self._listeners: list[Listener] = []
        # What the source can compute about its own past (only the simulator:
        # meteremu.past); the forecast dataset backfills from it.
        self.past: Past | None = None
        self._past_listeners: list[PastListener] = []
        self._broken: set[Listener] = set()  # listeners whose failure was logged already
        self.listener_errors = 0  # listener calls that raised (each listener logged once)
        self._last_new_arrival: float | None = None
        self._last_alive: float | None = None
        self._down_reason: str | None = None

    # -- listeners -------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
        self._broken.discard(listener)

    def add_past_listener(self, listener: PastListener) -> None:
        """Hear of the source's past: now if it offered one already, and on every new offer."""
        self._past_listeners.append(listener)
        if self.past is not None:
            listener(self, self.past)

    def remove_past_listener(self, listener: PastListener) -> None:
        if listener in self._past_listeners:
            self._past_listeners.remove(listener)

    def offer_past(self, past: Past) -> None:
        """The source can compute its readings over ``past`` (see :mod:`meteremu.past`)."""
        self.past = past
        for listener in list(self._past_listeners):
            try:
                listener(self, past)
            except Exception:
                self.listener_errors += 1
                log.failure("meter {meter}: a listener failed on the source's past", meter=self.name)

    def _tell(self, reading: Reading) -> None:
        """Tell every listener; one that raises cannot keep the others from hearing.

        A listener is an exporter, a device's notifier, the dashboard: a bug in
        one must not stop the rest of the service from seeing new readings (nor
        reach the source, which would count the reading as failed). The first
        failure of each listener is logged with its traceback, later ones only
        counted, so a listener broken on every reading cannot flood the log.
        """
        for listener in list(self._listeners):
            try:
                listener(self, reading)
            except Exception:
                self.listener_errors += 1
                if listener not in self._broken:
                    self._broken.add(listener)
                    log.failure("meter {meter}: a listener failed on a new reading "
                                "(further failures of this listener are only counted)",
                                meter=self.name)

    # -- input from the source ----------------------------------------------
    def update(self, reading: Reading) -> bool:
        """Take a reading from the source. Return True if it was new.

        A reading whose source timestamp is not newer than the latest one is a
        repeat (a poll that returned the same sample) and does not refresh the
        meter. New readings clear ``down``, update energy and notify listeners.
        """
        now = self.clock.seconds()
        self.stats.fetches += 1
        self.stats.last_success = now
        previous = self.latest
        if previous is not None and reading.measured_at <= previous.measured_at:
            return False
        if reading.energy is not None:
            self.energy.follow(reading.energy)
        elif previous is not None and self._last_new_arrival is not None:
            # Never integrate across a gap longer than stale_after (judged on
            # arrival, so a fast simulated clock is still integrated).
            if now - self._last_new_arrival <= self.stale_after:
                self.energy.add_segment(
                    previous.powers(), reading.powers(),
                    reading.measured_at - previous.measured_at,
                )
        self.latest = reading
        for key, value in reading.extras.items():
            self.extras[key] = (value, reading.measured_at)
        self._last_new_arrival = now
        self._last_alive = now
        self._down_reason = None
        self.history.append((reading.measured_at, reading.total_act_power))
        self._tell(reading)
        return True

    def alive(self) -> None:
        """A push source's connection is alive and its values are available.

        A steady value that the upstream never re-sends stays fresh while this
        is called within ``stale_after``; and a meter that was ``down`` (the
        connection dropped, a value was ``unavailable``) is up again when the
        source says so, even if the value itself did not change meanwhile.
        """
        self._last_alive = self.clock.seconds()
        self._down_reason = None

    def expire(self) -> None:
        """A push source knows its values are no longer current (a sensor went silent
        for its ``max_age``, or has no value): stale from now, not ``stale_after``
        after the last :meth:`alive`. The next new reading or ``alive`` ends it."""
        self._last_alive = None

    def report_failure(self, error: str, down: bool = True) -> None:
        """The source failed. ``error`` must not contain secrets.

        With ``down`` (the default) the meter is marked down at once: the
        upstream is unreachable or reports the value unavailable. A soft failure
        (``down=False``) is only counted; freshness then decays to stale.
        """
        now = self.clock.seconds()
        self.stats.failures += 1
        self.stats.last_error = error
        self.stats.last_error_at = now
        if down:
            self._down_reason = error

    # -- state -----------------------------------------------------------
    def age(self) -> float | None:
        """Seconds since the last new sample arrived, or None if none did."""
        if self._last_new_arrival is None:
            return None
        return max(0.0, self.clock.seconds() - self._last_new_arrival)

    def freshness(self) -> Freshness:
        if self._down_reason is not None:
            return Freshness.DOWN
        if self._last_alive is None:
            return Freshness.STALE
        if self.clock.seconds() - self._last_alive > self.stale_after:
            return Freshness.STALE
        return Freshness.FRESH

    @property
    def down_reason(self) -> str | None:
        return self._down_reason
