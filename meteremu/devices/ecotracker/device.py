"""One emulated EcoTracker: identity, the meter it serves, ``powerAvg``'s window, its pollers.

The only I/O-free decisions of the face live here: what a poll is answered
with (:meth:`EcoTracker.answer`) under the ``on_stale`` policy
(``meteremu.devices.stale``); the HTTP route only writes it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from meteremu.devices.base import random_mac
from meteremu.devices.ecotracker import body
from meteremu.devices.ecotracker.options import EVERHOME_OUI, Options
from meteremu.devices.pollers import PollerTracker
from meteremu.devices.stale import Unavailable, serving_reading
from meteremu.meter import IClock, Meter
from meteremu.reading import Reading

PRODUCT_ID = "1137"  # what everHome's EcoTracker IR announces in TXT productid


@dataclass
class EcoIdentity:  # not frozen: base.FaceIdentity declares plain attributes
    mac: str
    device_id: str
    serial: str | None
    model: str = "EcoTracker"
    fw_id: str = ""
    manufacturer: str = "everHome"


def generate_mac(rng: random.Random | None = None) -> str:
    return random_mac(EVERHOME_OUI, rng)


def make_identity(options: Options, mac: str) -> EcoIdentity:
    mac = mac.replace(":", "").replace("-", "").upper()
    return EcoIdentity(mac=mac, device_id=f"ecotracker-{mac}", serial=options.serial or mac.lower())


class EcoTracker:
    """The face (:class:`~meteremu.devices.base.Face`) and its answer to ``GET /v1/json``."""

    def __init__(self, options: Options, identity: EcoIdentity, meter: Meter, clock: IClock) -> None:
        self.options = options
        self.identity = identity
        self.meter = meter
        self.clock = clock
        self.window = body.PowerWindow(options.average_window)
        self.clients = PollerTracker(clock)

    def on_reading(self, meter: Meter, reading: Reading) -> None:
        """Meter listener: every reading goes into ``powerAvg``'s window."""
        self.window.add(self.clock.seconds(), reading.total_act_power)

    def answer(self, peer: str | None) -> tuple[int, bytes]:
        """``(HTTP status, body)`` for one poll from ``peer``: 200 and the document, or 503 and why."""
        self.clients.seen(peer, "http", "/v1/json")
        try:
            reading = serving_reading(self.meter, self.options.on_stale, self.clock)
            energy = self.meter.energy
            document = body.document(reading, self.window.mean(self.clock.seconds()),
                                     energy.total_import_wh, energy.total_export_wh, self.options.phases)
        except Unavailable as e:
            return 503, body.error_body(str(e))
        return 200, body.dumpb(document)
