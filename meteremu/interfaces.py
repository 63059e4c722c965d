"""The types of what meteremu's services are given: the reactor, the clock, the store.

Services take their collaborators as constructor arguments (tests pass a
``task.Clock`` or a memory reactor), and these are the types they are
checked against:

* :class:`IReactor` — the reactor: Twisted's own interfaces for time, TCP,
  UDP, threads, file descriptors (serial ports) and the run loop, joined in
  one. It is a typing device only (nothing asks ``providedBy``); Twisted's
  APIs that want one of the parts (``LoopingCall.clock``,
  ``HostnameEndpoint``, ``SerialPort``) accept it as such.
* ``IReactorTime`` — a clock, where scheduling is all a part needs.
* :class:`StateStore` — what parts use of :class:`meteremu.store.Store`;
  :class:`Values` — the part of it that only reads and puts by key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFDSet,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUDP,
)

__all__ = ["IReactor", "IReactorTime", "StateStore", "Values"]


class IReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorUDP, IReactorThreads, IReactorFDSet):
    """The reactor meteremu runs on (its own asyncio-based one, or a test's)."""


class Values(Protocol):
    """Key/value state read and written by key (a :class:`StateStore`, or ``store.MemoryValues``)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def put(self, key: str, value: Any) -> None: ...


class StateStore(Values, Protocol):
    """Durable key/value state (``meteremu.store.Store``)."""

    def register(self, key: str, snapshot: Callable[[], Any]) -> None: ...

    def run_interaction(self, interaction: Callable[..., Any], *args: Any) -> Deferred[Any]: ...
