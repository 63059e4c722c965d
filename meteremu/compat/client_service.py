"""Twisted's ``ClientService`` with its retry line at debug level.

``ClientService`` logs "Scheduling retry N to connect … in X seconds." at
*info* on every retry, through its class attribute ``_log`` (a private name;
Twisted 24.7 to 26.10, where ``_ClientMachine`` logs through the ``log`` it is
given). A source that retries for hours would fill the journal with it; the
project's rule is that a failure is logged when it first happens and its
repeats only at debug level. :class:`QuietClientService` hands the machine a
logger that files those lines at debug, in meteremu's own filtered stream.
``tests/unit/test_compat.py`` and ``tests/integration/test_compat.py`` holds the contract.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import ClientService
from twisted.logger import Logger

from meteremu.logs import logger


class _DebugInfo(Logger):
    """A Logger whose ``info`` is ``debug`` (ClientService logs nothing else at info)."""

    def info(self, format: str | None = None, **kwargs: Any) -> None:
        self.debug(format, **kwargs)


def _quiet_log() -> Logger:
    base = logger("meteremu.reconnect")
    return _DebugInfo(namespace=base.namespace, observer=base.observer)


class QuietClientService(ClientService):
    """``ClientService``, its retry announcements at debug level."""

    _log = _quiet_log()
