"""Home Assistant source: push over the WebSocket API, REST polling as a fallback.

``source: {type: homeassistant, url: http://ha:8123, token: …, entities: …}``.
The pure part (messages, compressed diffs, units, mapping, discovery) is in
``protocol.py``; the connection handling in ``client.py``; options in
``options.py``. Validating a config imports only ``options`` (the registry
contract): ``make_source`` imports the client stack (treq, autobahn, TLS) when
the service is built. See docs/sources.md, "Home Assistant".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.homeassistant.options import HomeAssistantOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

PUSH = True  # freshness follows the connection: default stale_after 60 s (design.md §4)

Options = HomeAssistantOptions


def make_source(meter: Meter, options: HomeAssistantOptions, reactor: IReactor, store: StateStore | None = None) -> Service:
    from meteremu.sources.homeassistant.client import HomeAssistantSource

    return HomeAssistantSource(meter, options, reactor)


__all__ = ["PUSH", "Options", "make_source"]
