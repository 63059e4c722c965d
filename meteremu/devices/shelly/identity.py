"""Who the emulated device says it is: MAC, id, firmware, model.

The MAC is either configured or, with ``mac: auto``, generated once and kept
in the store so the device id (which Home Assistant uses as its unique id)
never changes across restarts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from meteremu.devices.shelly.options import FW_ID_RE, Options

# Espressif's OUI, as on real Shelly Gen2 devices: clients that look at the
# vendor part of the MAC see what they expect.
ESPRESSIF_OUI = "C8F09E"


def generate_mac(rng: random.Random | None = None) -> str:
    rng = rng or random.SystemRandom()
    return ESPRESSIF_OUI + "".join(rng.choice("0123456789ABCDEF") for _ in range(6))


def normalise_mac(mac: str) -> str:
    return mac.replace(":", "").replace("-", "").upper()


@dataclass(frozen=True)
class Identity:
    mac: str
    device_id: str
    name: str | None
    model: str
    fw_id: str
    ver: str
    app: str
    gen: int
    profile: str
    serial: str | None
    manufacturer: str

    @property
    def fw_date(self) -> str:
        return self.fw_id[:8]


def make_identity(options: Options, mac: str) -> Identity:
    """Combine the options with the (configured or stored) MAC."""
    mac = normalise_mac(mac)
    match = FW_ID_RE.match(options.fw_id)
    ver = options.ver or (match.group(2) if match else options.fw_id)
    device_id = options.device_id or f"{options.FACE.prefix}-{mac.lower()}"
    return Identity(
        mac=mac, device_id=device_id, name=options.name, model=options.model,
        fw_id=options.fw_id, ver=ver, app=options.app, gen=options.gen,
        profile=options.profile if options.FACE.profiles else "", serial=options.serial, manufacturer=options.manufacturer,
    )


def client_identity(own: Identity, mac: str, prefix: str = "shellypro3em") -> Identity:
    """What one listed client sees: ``own`` with the client's MAC and the id derived from it.

    The id is always derived (a configured ``device_id`` names the device's
    own identity only): two clients must never share an id.
    """
    mac = normalise_mac(mac)
    return replace(own, mac=mac, device_id=f"{prefix}-{mac.lower()}")
