"""Log lines an attacker can trigger, at most once a minute per kind, with a count.

A warning per spoofed datagram or per rude connection is a second way to
flood: the journal (and a Pi's SD card) instead of the socket. A
:class:`RateLimitedLog` says the first occurrence of each kind at once, then
stays quiet for ``interval`` seconds and says how many it kept back when it
speaks again. Pure apart from the clock it is given.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from meteremu.interfaces import IReactorTime


class RateLimitedLog:
    """``warn(kind, format, **fields)``: one line per ``kind`` per ``interval``, then a count."""

    def __init__(self, log: Logger, clock: IReactorTime, interval: float = 60.0, max_kinds: int = 64) -> None:
        self.log, self.clock, self.interval, self.max_kinds = log, clock, interval, max_kinds
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self.suppressed = 0  # in all, for tests and metrics

    def warn(self, kind: str, format: str, **fields: Any) -> None:
        self.emit("warn", kind, format, **fields)

    def emit(self, level: str, kind: str, format: str, **fields: Any) -> None:
        """As :meth:`warn`, at ``level`` (``info``, ``warn``, ``error``)."""
        now = self.clock.seconds()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            self.suppressed += 1
            return
        if last is None and len(self._last) >= self.max_kinds:
            self._last.clear()  # kinds are few and fixed; this only bounds a bug
            self._held.clear()
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        if held:
            format += " ({held} more like it in the last {interval:g} s)"
            fields.update(held=held, interval=self.interval)
        getattr(self.log, level)(format, **fields)
