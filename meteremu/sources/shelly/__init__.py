"""A real Shelly (Gen2+: Pro 3EM, Pro EM, EM gen3, Plus/Pro 1PM/2PM, PM Mini…) as the meter
(``source: {type: shelly, host: …}``): for owners who want several batteries, filtering or
another face in front of the Shelly they have.

:mod:`.options` holds the options, :mod:`.parse` the pure part (status →
Reading, NotifyStatus merging, digest), :mod:`.source` the HTTP RPC poll and
the WebSocket. Validating a config imports no client library. User
documentation: docs/sources.md, "Shelly (a real one)".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.shelly.options import ShellyOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

Options = ShellyOptions
PUSH = False  # freshness follows interval (the device pushes on every change, at least each minute)


def make_source(meter: Meter, options: ShellyOptions, reactor: IReactor, store: StateStore | None = None) -> Service:
    from meteremu.sources.shelly.source import ShellySource

    return ShellySource(meter, options, reactor)


__all__ = ["PUSH", "Options", "make_source"]
