"""Enphase Envoy / IQ Gateway source (``source: {type: envoy, ...}``).

* :mod:`.parse`: pure parsers of the local API's answers (specs/envoy.md §4);
* :mod:`.auth`: JWT / Enlighten / Entrez token handling and legacy Digest;
* :mod:`.client`: the treq client, the TLS policy and the poll service;
* :mod:`.options`: the ``Options`` dataclass the config validator builds.

See docs/sources.md ("Envoy") for the user-facing description.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.envoy.options import EnvoyOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

Options = EnvoyOptions


def make_source(meter: Meter, options: EnvoyOptions, reactor: IReactor, store: StateStore | None = None) -> Service:
    """Build the source service for the registry in ``meteremu.sources``.

    The client stack (treq, pyOpenSSL) is imported here, not at module import,
    so validating a config does not load it.
    """
    from meteremu.sources.envoy.client import EnvoySource

    return EnvoySource(meter, options, reactor, store)


__all__ = ["Options", "EnvoyOptions", "make_source"]
