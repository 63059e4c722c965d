"""The idle watchdog and the drop of a byte-stream source's connection (dsmr, sml).

A meter on a serial line or a TCP bridge sends on its own; silence for
``idle`` seconds means the line is dead even when the transport says
nothing (a bridge that lost its serial side, an unplugged head), so the
source drops the connection and its reconnector starts again. Dropping
marks the protocol first, so the loss that follows is known to be ours and
not reported as the other end going away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall

from meteremu.sources.common import SourceStatus


class Droppable(Protocol):
    dropped: bool
    transport: Any


class StreamWatchdog(SourceStatus):
    """``_arm_watchdog`` on every good frame, ``_drop`` to end a connection.

    The class using it has ``idle`` (seconds), ``_watchdog`` and an
    ``_idle(proto)`` that says what went wrong and calls ``_drop``; on a lost
    connection it cancels the watchdog (``_cancel_timers("_watchdog")``).
    """

    idle: float
    _watchdog: IDelayedCall | None
    _idle: Callable[[Any], None]

    def _arm_watchdog(self, proto: Any) -> None:
        self._rearm("_watchdog", self.idle, self._idle, proto)

    def _drop(self, proto: Droppable) -> None:
        proto.dropped = True
        transport = proto.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()
