"""Tasmota with an SML / OBIS meter script (Hichi, bitshake and other IR heads)
(``source: {type: tasmota, …}``).

* ``mode: http`` polls ``http://<host>/cm?cmnd=Status%2010`` (the web password
  as Tasmota wants it, in the query);
* ``mode: mqtt`` takes the ``tele/<topic>/SENSOR`` pushes from the broker,
  with ``tele/<topic>/LWT`` as availability.

Both read the same JSON (``Status 10`` wraps it in ``StatusSNS``) with the
same fields: by the name the script gives them (``Power_curr``) or by
JSONPath. :mod:`.options` holds the options, :mod:`.parse` the pure part,
:mod:`.source` the two services. Validating a config imports no client
library. User documentation: docs/sources.md, "Tasmota".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.tasmota.options import TasmotaOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

Options = TasmotaOptions
PUSH = False  # freshness follows interval: the poll period, or the device's TelePeriod


def make_source(meter: Meter, options: TasmotaOptions, reactor: IReactor, store: StateStore | None = None) -> Service:
    if options.mode == "mqtt":
        from meteremu.sources.tasmota.source import TasmotaMQTTSource

        return TasmotaMQTTSource(meter, options, reactor)
    from meteremu.sources.tasmota.source import TasmotaHTTPSource

    return TasmotaHTTPSource(meter, options, reactor)


__all__ = ["PUSH", "Options", "make_source"]
