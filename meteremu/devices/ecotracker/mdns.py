"""The EcoTracker's DNS-SD record: ``_everhome._tcp`` with TXT ``ip``, ``serial``, ``productid``.

The announcing itself is the Shelly face's :class:`~meteremu.devices.shelly.mdns.MdnsService`
(probing, interfaces, goodbye on stop); only the record differs. Instance and
host are ``ecotracker-<MAC>`` as on the device, and ``ip`` repeats the
announced address, which the EcoFlow app reads (batteries.md §3.3).
"""

from __future__ import annotations

from collections.abc import Sequence

from zeroconf.asyncio import AsyncServiceInfo

from meteremu.devices.ecotracker.device import PRODUCT_ID, EcoIdentity
from meteremu.devices.shelly.mdns import server_name

EVERHOME_TYPE = "_everhome._tcp.local."


def txt_properties(identity: EcoIdentity, address: str) -> dict[str, str]:
    return {"ip": address, "serial": identity.serial or identity.mac.lower(), "productid": PRODUCT_ID}


def service_infos(identity: EcoIdentity, port: int, hostname: str | None,
                  addresses: Sequence[str]) -> list[AsyncServiceInfo]:
    return [AsyncServiceInfo(
        EVERHOME_TYPE, f"{identity.device_id}.{EVERHOME_TYPE}", port=port,
        properties=txt_properties(identity, addresses[0]),
        server=server_name(hostname or identity.device_id), parsed_addresses=list(addresses))]
