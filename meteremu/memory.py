"""Give freed heap back to the operating system (glibc).

glibc keeps freed memory in its arenas, so a process's RSS stays at its peak:
after start-up (imports, config, building the tree) and after a training run.
On a Raspberry Pi that memory matters; ``malloc_trim`` returns it. Best
effort: a no-op where there is no glibc.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service


def release_memory() -> None:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def freeze_startup() -> None:
    """Keep the objects made at start-up out of every later garbage collection.

    A full collection walks every tracked object: about 70,000 after
    start-up, 40 ms on a slow core, and a flood of connections makes the
    collector run full collections now and then: a battery's poll waited
    that long (bench/attacks.py). ``gc.freeze`` moves what exists now (the
    tree, modules, caches: all of it lives as long as the process) to a
    generation the collector never walks. Objects made later are collected
    as before; a start-up object that later becomes cyclic garbage is not
    (reference counting still frees what is not in a cycle).
    """
    gc.collect()
    gc.freeze()


def trim() -> None:
    """Only ``malloc_trim``: no garbage collection (a full one can take tens of ms)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Trimmer(Service):
    """Gives the heap back once connections stop closing: ``delay`` after the last, or every ``interval``.

    A flood (a WebSocket client sending pings it never reads the answers to,
    pipelined requests) grows the heap with buffers that are all freed when
    the client is dropped, but glibc keeps them: RSS stayed 20 % above its
    level before the attack (bench/attacks.py). ``soon()`` is cheap to call
    on every closed connection (it pushes one timer back); the trim itself
    takes about a millisecond, and during a long flood it runs at least once
    per ``interval``.
    """

    def __init__(self, clock: Any, delay: float = 2.0, interval: float = 30.0,
                 action: Callable[[], None] = trim) -> None:
        self.clock, self.delay, self.interval, self.action = clock, delay, interval, action
        self._pending: Any = None
        self._first = 0.0  # when the pending trim was first asked for
        self.runs = 0

    def soon(self) -> None:
        if not self.running:
            return
        now = self.clock.seconds()
        if self._pending is not None and self._pending.active():
            if now - self._first < self.interval:
                self._pending.reset(self.delay)
            return
        self._first = now
        self._pending = self.clock.callLater(self.delay, self._run)

    def _run(self) -> None:
        self._pending = None
        self.runs += 1
        self.action()

    def stopService(self) -> None:
        super().stopService()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
