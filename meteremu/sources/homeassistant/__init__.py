"""Home Assistant source: push over the WebSocket API, REST polling as a fallback.

``source: {type: homeassistant, url: http://ha:8123, token: …, entities: …}``.
The pure part (messages, compressed diffs, units, mapping, discovery) is in
``protocol.py``; the connection handling in ``client.py``; options in
``options.py``. See docs/sources.md, "Home Assistant".
"""

from __future__ import annotations

from meteremu.sources.homeassistant.client import HomeAssistantSource, make_source
from meteremu.sources.homeassistant.options import Entities, HomeAssistantOptions, Smoothing

PUSH = True  # freshness follows the connection: default stale_after 60 s (design.md §4)

Options = HomeAssistantOptions

__all__ = ["PUSH", "Entities", "HomeAssistantOptions", "HomeAssistantSource", "Options", "Smoothing",
           "make_source"]
