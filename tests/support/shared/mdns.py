"""What the unit and integration tests of mdns share (helpers, data)."""

from __future__ import annotations

import re
from typing import Any

import ifaddr

from meteremu.devices.shelly.identity import Identity, make_identity
from meteremu.devices.shelly.options import Options

MAC = "C8F09E123456"


LOOPBACK = "127.0.0.1"


def identity(mac: str = MAC, **options: Any) -> Identity:
    return make_identity(Options(mac=mac, **options), mac)


def adapter(name: str, *ips: str | tuple[str, int, int]) -> ifaddr.Adapter:
    return ifaddr.Adapter(name, name, [ifaddr.IP(ip, 24, name) for ip in ips])


ADAPTERS = [
    adapter("lo", LOOPBACK, ("::1", 0, 0)),
    adapter("eth0", "192.168.1.20", ("fe80::1", 0, 2), "192.168.1.21"),
    adapter("docker0", "172.17.0.1"),
    adapter("wg0", ("fd00::5", 0, 0)),
]


def no_default() -> str:
    raise AssertionError("the primary address must not be looked up when one is configured")


def ha_mac_from_name(name: str) -> str | None:
    """Home Assistant's rule: an instance named ``shelly*``; MAC after the last '-'."""
    instance = name.split(".", 1)[0]
    if not instance.lower().startswith("shelly"):
        return None
    tail = instance.rsplit("-", 1)[-1]
    return tail if re.fullmatch(r"[0-9A-Fa-f]{12}", tail) else None


def decoded(properties: dict[bytes, bytes | None]) -> dict[str, str | None]:
    return {k.decode(): None if v is None else v.decode() for k, v in properties.items()}
