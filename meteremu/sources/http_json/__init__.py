"""Any device with a JSON HTTP API (``source: {type: http_json, url: …, values: …}``).

AMIS readers, IOmeter, the Fronius Solar API, Tasmota's web API, a home-made
gateway: a URL polled every ``interval`` (GET or POST, headers, basic or
bearer authentication, TLS verified, pinned or not), and a JSONPath per value.

* :mod:`.options`: the ``Options`` dataclass the config validator builds;
* :mod:`meteremu.sources.jsonfields`: paths, units, checks, Readings (pure);
* :mod:`.source`: the poll service (treq through :mod:`meteremu.httpclient`).

Validating a config imports only ``options`` (the registry contract).
User documentation: docs/sources.md, "HTTP JSON".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.http_json.options import HttpJsonOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

Options = HttpJsonOptions
PUSH = False  # freshness follows interval


def make_source(meter: Meter, options: HttpJsonOptions, reactor: IReactor, store: StateStore | None = None) -> Service:
    from meteremu.sources.http_json.source import HttpJsonSource

    return HttpJsonSource(meter, options, reactor)


__all__ = ["PUSH", "Options", "make_source"]
