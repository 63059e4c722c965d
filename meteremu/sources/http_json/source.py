"""The HTTP JSON source's I/O: the poll loop of :mod:`meteremu.sources.httppoll` on one URL.

Each 200 answer is decoded with exact numbers, its values picked by
:mod:`meteremu.sources.jsonfields` (pure) and served as one Reading. Its time
is the arrival time (every poll is a new sample), or the answer's own
``timestamp_path``: a poll that returns the same time again is a repeat and
does not refresh the meter (a device that stopped updating goes stale).

Secrets: the password, token and header values go only into the request; the
URL shown in logs and the dashboard has its query left out.
"""

from __future__ import annotations

import base64
import dataclasses
import random
from collections.abc import Callable, Mapping
from typing import Any

from meteremu.clocks import wall
from meteremu.httpclient import HttpResult
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.meter import Meter
from meteremu.reading import Reading
from meteremu.sources.http_json.options import HttpJsonOptions
from meteremu.sources.httpoptions import shown_url
from meteremu.sources.httppoll import PollingSource
from meteremu.sources.jsonfields import ValueProblem, decode_document, read_document
from meteremu.sources.mqtt.mapping import MAX_AHEAD, parse_time
from meteremu.sources.stamps import MonotonicStamps
from meteremu.tls import DeviceTLS, TLSPolicy, parse_fingerprint


def device_tls(options: Any) -> TLSPolicy | None:
    """The trust the options ask for: a pinned certificate, a CA file, none, or the web's (None)."""
    if options.tls_fingerprint:
        return DeviceTLS(fingerprint=parse_fingerprint(options.tls_fingerprint))
    if options.ca_file:
        return DeviceTLS(ca_file=options.ca_file)
    if not options.verify_ssl:
        return DeviceTLS(verify=False)
    return None


def auth_headers(username: str | None, password: str | None, token: str | None) -> dict[str, str]:
    if token:
        return {"Authorization": f"Bearer {token}"}
    if username:
        pair = f"{username}:{password or ''}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    return {}


def sample_time(doc: Any, options: HttpJsonOptions, arrival: float) -> float:
    """The answer's own time (``timestamp_path``), or ``arrival``; ValueProblem when unusable."""
    path = options.timestamp()
    if path is None:
        return arrival
    found = path.find(doc)
    if len(found) != 1:
        raise ValueProblem(f"timestamp_path {path.text} selects {len(found)} values, not one")
    stamp = parse_time(found[0])
    if stamp is None:
        raise ValueProblem(f"timestamp_path {path.text}: {str(found[0])[:40]!r} is not a time")
    if stamp > arrival + MAX_AHEAD:
        raise ValueProblem(f"timestamp_path {path.text}: the time is more than {MAX_AHEAD:g} s ahead "
                           "of this host's clock")
    return stamp


class HttpJsonSource(PollingSource):
    """Feeds a Meter from any JSON HTTP API (see the module docstring)."""

    type_name = "http_json"
    label = "HTTP JSON"

    def __init__(self, meter: Meter, options: HttpJsonOptions, reactor: IReactor,
                 clock: IReactorTime | None = None, rng: Callable[[], float] = random.random) -> None:
        super().__init__(meter, reactor, interval=options.interval, timeout=options.timeout,
                         reconnect_min=options.reconnect_min, reconnect_max=options.reconnect_max,
                         tls=device_tls(options), clock=clock, rng=rng)
        self.options = options
        self.extraction = options.extraction()
        self.url = options.url.strip()
        self._headers = {"Accept": "application/json", **options.headers,
                         **auth_headers(options.username, options.password, options.token)}
        if options.method == "POST" and options.body is not None:
            self._headers.setdefault("Content-Type", options.content_type)
        self._body = options.body.encode() if options.body is not None else None
        self._stamps = MonotonicStamps()
        self.meter.details = {"url": shown_url(self.url), "method": options.method,
                              "values": self.extraction.describe(), "connection": self.state}

    def request(self) -> tuple[str, str, Mapping[str, str], bytes | None]:
        return self.options.method, self.url, self._headers, self._body

    def take(self, result: HttpResult) -> Reading | None:
        doc = decode_document(result.body)
        arrival = wall(self.clock)
        stamp = sample_time(doc, self.options, arrival)
        reading = read_document(self.extraction, doc, stamp)
        measured = self._stamps.publish(stamp)
        if measured != stamp:
            reading = dataclasses.replace(reading, measured_at=measured)
        return reading if self.meter.update(reading) else None
