"""Kamstrup MULTICAL heat meters over KMP (``source: {type: kamstrup, serial: …}``).

* :mod:`.options`: the ``Options`` dataclass the config validator builds;
* :mod:`.kmp`: the KMP wire codec (pure);
* :mod:`.parse`: the register catalogue and register values → extras (pure);
* :mod:`.source`: the optical head's line (serial or TCP) and the poll service.

Validating a config imports no I/O module (the registry contract);
``make_source`` imports the service when it is built. See docs/sources.md
("Kamstrup").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.kamstrup.options import KamstrupOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

Options = KamstrupOptions
PUSH = False


def make_source(meter: Meter, options: KamstrupOptions, reactor: IReactor, store: StateStore | None = None) -> Service:
    from meteremu.sources.kamstrup.source import KamstrupSource

    return KamstrupSource(meter, options, reactor)


__all__ = ["PUSH", "Options", "make_source"]
