"""What the unit and integration tests of mqtt_source share (helpers, data)."""

from __future__ import annotations

from typing import Any

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

import meteremu.sources
from meteremu.config import parse_config
from meteremu.sources.mqtt import Options

T0 = 1_700_000_000.0


def register(case: Any) -> None:
    """Make ``type: mqtt`` known to the config (the registry dict is read live)."""
    modules = meteremu.sources.SOURCE_MODULES
    if "mqtt" not in modules:
        modules["mqtt"] = "meteremu.sources.mqtt"
        case.addCleanup(modules.pop, "mqtt", None)


def options(case: Any, **source: Any) -> Options:
    register(case)
    config = parse_config({"meters": {"grid": {"source": {"type": "mqtt", **source}}}, "devices": []},
                          "(test)", env={"PW": "s3cret-pw"})
    return config.meters["grid"].source.options


class LogCapture:
    def __init__(self, case: TestCase | SynchronousTestCase) -> None:
        self.texts: list[str] = []
        globalLogPublisher.addObserver(self.observe)
        case.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event: dict[str, Any]) -> None:
        self.texts.append(formatEvent(event) or "")
        if event.get("log_failure") is not None:
            self.texts.append(str(event["log_failure"].getTraceback()))

    def text(self) -> str:
        return "\n".join(self.texts)
