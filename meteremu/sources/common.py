"""Small pieces every source service shares (no reactor, no client stacks)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from meteremu.logs import logger


class SourceStatus:
    """Connection state in ``meter.details`` and log lines said once per change.

    A mixin for source services: they set ``self.meter``, ``self.state`` and
    ``self._said = {}``. Log events keep the namespace of the source's module.
    """

    meter: Any
    state: str
    _said: dict[str, str]
    clock: Any
    _timer: Any
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

    def _cancel_timers(self, *names: str) -> None:
        """Cancel the delayed calls held in the attributes ``names`` and clear them."""
        for name in names:
            timer = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)


class SourceEvents:
    """``when(event)`` Deferreds fired by ``_emit``; the source sets ``self._waiters = []``."""

    _waiters: list[tuple[str, Any]]

    def _wait_for(self, event: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._waiters.append((event, d))
        return d

    def _emit(self, event: str, value: Any = None) -> None:
        fire = [d for e, d in self._waiters if e == event]
        self._waiters = [(e, d) for e, d in self._waiters if e != event]
        for d in fire:
            d.callback(value)


def quiet_factory(protocol: Any, *args: Any) -> Any:
    """A client factory building ``protocol(*args)`` without "Starting factory" log lines
    (sources reconnect often; those lines would flood the journal)."""
    from twisted.internet.protocol import ClientFactory

    class _Factory(ClientFactory):
        noisy = False

        def buildProtocol(self, addr: Any) -> Any:
            proto = protocol(*args)
            proto.factory = self
            return proto

    return _Factory()
