"""Small pieces every source service shares (no reactor, no client stacks)."""

from __future__ import annotations

from typing import Any

from meteremu.logs import logger


class SourceStatus:
    """Connection state in ``meter.details`` and log lines said once per change.

    A mixin for source services: they set ``self.meter``, ``self.state`` and
    ``self._said = {}``. Log events keep the namespace of the source's module.
    """

    meter: Any
    state: str
    _said: dict[str, str]

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
