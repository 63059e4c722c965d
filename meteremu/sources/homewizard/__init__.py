"""HomeWizard P1 meter (HWE-P1) local API (``source: {type: homewizard, host: …}``).

* :mod:`.options`: the ``Options`` dataclass the config validator builds;
* :mod:`.parse`: v1/v2 bodies → Reading (pure);
* :mod:`.source`: the poll service and the v2 WebSocket (treq, autobahn, TLS).

Validating a config imports only ``options`` (the registry contract):
``make_source`` imports the client stack when the service is built.
See docs/sources.md ("HomeWizard P1 meter") for the user-facing description.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meteremu.sources.homewizard.options import HomeWizardOptions

if TYPE_CHECKING:
    from twisted.application.service import Service

    from meteremu.interfaces import IReactor, StateStore
    from meteremu.meter import Meter

Options = HomeWizardOptions
PUSH = False  # freshness follows interval (the WebSocket pushes once per P1 telegram)


def make_source(meter: Meter, options: HomeWizardOptions, reactor: IReactor, store: StateStore | None = None) -> Service:
    from meteremu.sources.homewizard.source import HomeWizardSource

    return HomeWizardSource(meter, options, reactor)


__all__ = ["PUSH", "Options", "make_source"]
