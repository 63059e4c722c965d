"""The Tibber Pulse source's I/O: the poll loop of :mod:`meteremu.sources.httppoll` on the bridge.

Each answer is the last SML frame the Pulse read. The same bytes again mean
the Pulse has read nothing new (it lost the meter, or the poll came before
the next frame): a repeat that does not refresh the meter, so a Pulse that
stopped reading goes stale instead of serving its last value forever. A
frame with noise, a CRC error or a value that cannot be right is refused
(soft failure: stale, three in a row down); the bridge's slowness is met with
the whole-request ``timeout`` (5 s by default). The password goes only into
the Authorization header.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from meteremu.clocks import wall
from meteremu.httpclient import HttpResult
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.meter import Meter
from meteremu.reading import Reading
from meteremu.sources.http_json.source import auth_headers
from meteremu.sources.httppoll import PollingSource
from meteremu.sources.smlparse import read_sml
from meteremu.sources.tibber_pulse.options import TibberPulseOptions


class TibberPulseSource(PollingSource):
    """Polls the Pulse bridge (see the module docstring)."""

    type_name = "tibber_pulse"
    label = "Tibber Pulse"

    def __init__(self, meter: Meter, options: TibberPulseOptions, reactor: IReactor,
                 clock: IReactorTime | None = None, rng: Callable[[], float] = random.random) -> None:
        super().__init__(meter, reactor, interval=options.interval, timeout=options.timeout,
                         reconnect_min=options.reconnect_min, reconnect_max=options.reconnect_max,
                         clock=clock, rng=rng)
        self.options = options
        self.url = options.url()
        self._headers = {"Accept": "*/*", **auth_headers(options.username, options.password, None)}
        self._last_frame: bytes | None = None
        self.repeats = 0
        self.meter.details = {"url": self.url, "connection": self.state}

    def request(self) -> tuple[str, str, Mapping[str, str], bytes | None]:
        return "GET", self.url, self._headers, None

    def take(self, result: HttpResult) -> Reading | None:
        sml = read_sml(result.body, self.options.max_power)
        reading = sml.reading(wall(self.clock), self.options.invert)
        if result.body == self._last_frame:
            self.repeats += 1
            return None  # the same frame again: nothing new was read from the meter
        self._last_frame = result.body
        if sml.meter_id:
            self.meter.details["meter_id"] = sml.meter_id
        return reading if self.meter.update(reading) else None
