"""InfluxDB exporter: meter readings as line protocol over HTTP (treq).

``exporters: {influxdb: {...}}`` in the config. ``api: v1`` writes to
``/write?db=&rp=`` (InfluxDB 1.x, including Debian's 1.6; the database is
created if missing), ``api: v2`` to ``/api/v2/write?org=&bucket=`` (InfluxDB
1.8+, 2.x, 3.x, VictoriaMetrics). High-rate points go to ``database`` /
``bucket``; the daily energy summary goes to ``low_rate_database`` /
``low_rate_bucket`` (envoy-logger's two-bucket layout), or to the same place
when those are not set. See ``docs/exporters.md`` for the schema.

The modules: ``lineprotocol`` (pure formatting and escaping), ``points``
(pure: Meter/Reading → points, day boundaries, daily summaries) and
``service`` (buffering, batching, retries, the midnight schedule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meteremu.configtypes import Duration

if TYPE_CHECKING:  # the services import their client libraries: only when built
    from meteremu.days import DayLedger
    from meteremu.exporters.influxdb.service import InfluxExporter
    from meteremu.exporters.prometheus import Metrics
    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meterset import MeterSet


@dataclass(frozen=True)
class Options:
    enabled: bool = True
    url: str = "http://localhost:8086"
    api: Literal["v1", "v2"] = "v1"
    # v1: database, retention policy, optional user/password (HTTP Basic auth).
    database: str = "meteremu"
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    create_database: bool = True
    # v2: org (InfluxDB 2.x needs it; 1.8 and VictoriaMetrics ignore it),
    # bucket (default: ``database``), token (default with a username:
    # ``username:password``, as InfluxDB 1.8's v2 API expects).
    org: str | None = None
    bucket: str | None = None
    token: str | None = field(default=None, repr=False)
    # Daily summaries (envoy-logger's low-rate bucket); unset = the same as above.
    low_rate_database: str | None = None
    low_rate_bucket: str | None = None
    # Batching and buffering (Telegraf's norms, sources-sinks.md §5.3).
    batch_size: int = 1000
    flush_interval: Duration = 5.0
    buffer_limit: int = 10000
    timeout: Duration = 5.0
    precision: Literal["s", "ms", "us", "ns"] = "ms"
    # The day of the daily summary: an IANA zone; unset = the system's local time.
    timezone: str | None = None

    def validate(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            shown = "" if "@" in self.url else f"; got {self.url!r}"  # may hold a secret
            problems.append(("url", f"expected an http:// or https:// URL{shown}"))
        elif parts.username is not None or parts.password is not None:
            # Never echo the URL here: it holds a secret.
            problems.append(("url", "expected a URL without credentials; set username/password or token instead"))
        if self.api == "v1" and not self.database:
            problems.append(("database", "expected a database name for api v1"))
        if self.api == "v2" and not (self.bucket or self.database):
            problems.append(("bucket", "expected a bucket name for api v2"))
        if self.password and self.username is None:
            problems.append(("username", "expected a username with the password"))
        if self.batch_size < 1:
            problems.append(("batch_size", f"expected at least 1; got {self.batch_size}"))
        if self.buffer_limit < self.batch_size:
            problems.append(("buffer_limit", f"expected at least batch_size ({self.batch_size}); got {self.buffer_limit}"))
        if self.flush_interval <= 0:
            problems.append(("flush_interval", "expected a duration above 0"))
        if self.timeout <= 0:
            problems.append(("timeout", "expected a duration above 0"))
        if self.timezone is not None:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                problems.append(("timezone", f"expected an IANA time zone like Europe/Amsterdam; got {self.timezone!r}"))
        return problems


def make_exporter(options: Options, meters: MeterSet, reactor: IReactor, metrics: Metrics | None,
                  store: StateStore | None, days: DayLedger | None = None) -> InfluxExporter:
    """Build the exporter service for the registry in ``meteremu.exporters``.

    It has no ``ready``: an unreachable database never fails the start.
    Its daily summaries follow ``days`` (the application's ledger).
    """
    from meteremu.exporters.influxdb.service import InfluxExporter

    return InfluxExporter(options, meters, reactor, metrics=metrics, store=store, days=days)
