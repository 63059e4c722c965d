"""Small pieces every source service shares (no reactor, no client stacks)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from meteremu.interfaces import IReactorTime
from meteremu.logs import logger


class SourceStatus:
    """Connection state in ``meter.details`` and log lines said once per change.

    A mixin for source services: they set ``self.meter``, ``self.state`` and
    ``self._said = {}``. Log events keep the namespace of the source's module.
    """

    meter: Any
    state: str
    _said: dict[str, str]
    clock: IReactorTime
    _timer: IDelayedCall | None
    _stopping: bool

    def _set_state(self, state: str) -> None:
        self.state = state
        details = getattr(self.meter, "details", None)
        if isinstance(details, dict):
            details["connection"] = state

    def _say(self, topic: str, message: str, level: str = "warn") -> None:
        """Log ``message`` only when it differs from the last one on ``topic``."""
        if self._said.get(topic) != message:
            self._said[topic] = message
            log = logger(type(self).__module__)
            getattr(log, level)("meter {meter}: {text}", meter=self.meter.name, text=message)

    # -- the retry/poll timer (``self.clock``, ``self._timer``, ``self._stopping``) ---------------
    def _call_later(self, delay: float, run: Any) -> None:
        """(Re)arm ``self._timer`` to call ``run`` after ``delay``, unless stopping."""
        if self._stopping:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, run)

    def _stop_running(self, *timers: str) -> None:
        """The start of ``stopService``: no new work from now on, state "stopped", ``timers`` cancelled."""
        self._stopping = True
        self._set_state("stopped")
        self._cancel_timers(*timers)

    def _rearm(self, name: str, delay: float, run: Any, *args: Any) -> None:
        """Push the delayed call held in the attribute ``name`` back to ``delay`` from now,
        or schedule ``run(*args)`` there when none is pending (watchdogs, refresh timers)."""
        timer = getattr(self, name)
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            setattr(self, name, self.clock.callLater(delay, run, *args))

    def _cancel_timers(self, *names: str) -> None:
        """Cancel the delayed calls held in the attributes ``names`` and clear them."""
        for name in names:
            timer = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)


class SourceEvents:
    """``when(event)`` Deferreds fired by ``_emit``; the source sets ``self._waiters = []``
    and ``self.reactor``.

    Waiters hear of an event on the next reactor turn, never from inside the
    code that caused it: a lost connection is reported while ClientService's
    state machine is arming the retry (:mod:`meteremu.reconnect`), and a
    waiter may want to look at that retry, or stop the service.
    """

    _waiters: list[tuple[str, Any]]
    reactor: IReactorTime

    def _wait_for(self, event: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._waiters.append((event, d))
        return d

    def _emit(self, event: str, value: Any = None) -> None:
        fire = [d for e, d in self._waiters if e == event]
        if not fire:
            return
        self._waiters = [(e, d) for e, d in self._waiters if e != event]
        self.reactor.callLater(0, _fire, fire, value)


def _fire(waiters: list[Deferred[Any]], value: Any) -> None:
    for d in waiters:
        d.callback(value)


class StatefulEvents(SourceStatus, SourceEvents):
    """A source whose connection states are also events: ``when("connected")``, and its own
    events (``"sample"``, ``"telegram"``…, each source's docstring lists them)."""

    def _set_state(self, state: str) -> None:
        super()._set_state(state)
        self._emit(state)

    def when(self, event: str) -> Deferred[Any]:
        """Fires at the next ``event``."""
        return self._wait_for(event)

