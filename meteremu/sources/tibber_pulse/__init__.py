"""Tibber Pulse through its bridge's local web server (``source: {type: tibber_pulse, host: …}``).

The bridge answers ``GET /data.json?node_id=N`` (HTTP basic auth, user
``admin``, the password from the sticker) with the last SML frame the Pulse
read from the meter — binary, despite the name. :mod:`.options` holds the
options, :mod:`meteremu.sources.smlparse` the decoding (smllib), :mod:`.source`
the poll. Validating a config imports neither smllib nor a client stack.
User documentation: docs/sources.md, "Tibber Pulse".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.tibber_pulse.options import TibberPulseOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

Options = TibberPulseOptions
PUSH = False  # freshness follows interval


def make_source(meter: Meter, options: TibberPulseOptions, reactor: IReactor,
                store: StateStore | None = None) -> Service:
    from meteremu.sources.tibber_pulse.source import TibberPulseSource

    return TibberPulseSource(meter, options, reactor)


__all__ = ["PUSH", "Options", "make_source"]
