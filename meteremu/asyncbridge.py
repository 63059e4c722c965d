"""The only place that mixes asyncio futures and Twisted Deferreds.

meteremu runs on Twisted's asyncio reactor, so asyncio-only libraries
(pymodbus, zeroconf, aioshelly in tests) share the reactor's event loop.
Twisted code cannot ``await`` an asyncio awaitable directly (and vice versa),
so every crossing goes through these two helpers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


def as_deferred(awaitable: Coroutine[Any, Any, T] | Awaitable[T]) -> Deferred[T]:
    """Run an asyncio coroutine/future on the reactor's loop; return a Deferred."""
    return Deferred.fromFuture(asyncio.ensure_future(awaitable))


def as_future(d: Deferred[T]) -> asyncio.Future[T]:
    """Let asyncio code await a Deferred (inside a running loop)."""
    return d.asFuture(asyncio.get_event_loop())


def require_asyncio_reactor(reactor: object) -> None:
    """Fail clearly when an asyncio-only part runs on another reactor."""
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise RuntimeError("this part of meteremu needs the asyncio reactor: run twistd without --reactor, or with --reactor=meteremu or asyncio")
