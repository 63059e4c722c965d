"""What the unit and integration tests of metermanager share (helpers, data)."""

from __future__ import annotations

from meteremu.config import parse_config


def meters(**sources: dict) -> dict:
    data = {"meters": {name: {"source": {"type": "simulator", "interval": "1h", **src}}
                       for name, src in sources.items()}}
    return dict(parse_config(data, "(test)", env={}).meters)
