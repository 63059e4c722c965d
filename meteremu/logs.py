"""meteremu's loggers, filtered by the ``logging.level`` config key.

twistd sets up its observers after the service tree is built, so instead of
replacing them every meteremu Logger sends its events through one filtering
observer whose level the config sets. Twisted's own events pass unfiltered.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_levels])

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "error": LogLevel.error, "critical": LogLevel.critical}


def logger(namespace: str) -> Logger:
    return Logger(namespace=namespace, observer=_observer)


def set_level(name: str) -> None:
    _levels.setLogLevelForNamespace("", LEVELS[name])
