"""Two clocks: one to schedule and judge freshness by, one for timestamps.

A host's wall clock jumps: NTP steps it at boot (a Raspberry Pi has no RTC),
an operator sets it. Twisted schedules every timer on ``reactor.seconds()``,
which is the wall clock: after a step back of N seconds nothing scheduled
would run for N seconds (no polling, saving, notifying) while a negative age
would count as fresh. meteremu's reactor therefore counts its seconds on
the monotonic clock (:func:`monotonic_epoch`: starts at the wall time of
start-up, then never jumps), and the wall clock is read only where a
timestamp is shown to someone (:func:`wall`): ``Sys.GetStatus``, the ``ts`` of
a notification, the local date that ends a day.
"""

from __future__ import annotations

import time

_OFFSET = time.time() - time.monotonic()


def monotonic_epoch() -> float:
    """Seconds that read like the epoch at start-up and then move only forward, steadily."""
    return time.monotonic() + _OFFSET


def wall(clock: object) -> float:
    """The wall-clock time for timestamps, from ``clock``.

    meteremu's reactor gives its wall clock (``wallSeconds``); a clock that has
    no separate one (a test's ``task.Clock``, Twisted's own reactors) is used
    as it is, so tests keep driving every time from one ``Clock``.
    """
    wall_seconds = getattr(clock, "wallSeconds", None)
    seconds = wall_seconds if wall_seconds is not None else getattr(clock, "seconds")  # noqa: B009
    value: float = seconds()
    return value
