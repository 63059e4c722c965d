"""mDNS / DNS-SD announcement of an emulated Shelly Pro 3EM (specs/shelly.md §5).

Home Assistant finds Shelly devices by browsing ``_http._tcp.local.`` (instance
names matching ``shelly*``) and ``_shelly._tcp.local.``, and takes the MAC from
the 12 hex digits after the last ``-`` of the instance name; aioshelly looks
at ``_shelly._tcp`` first.  So both services are published under the device
id (``shellypro3em-<mac lowercase>``), and the TXT records carry what the
batteries and HA look for (``gen``, ``app``, ``ver``, ``id``, ``fw_id``,
``arch``).

The module is split so most of it is testable without a network:

* pure helpers build the names, TXT records and service infos, resolve
  ``mdns.interfaces`` against an adapter list, and decide which addresses and
  IP version to use (``plan_mdns``);
* ``default_ipv4`` finds the primary address with the default-route trick;
* ``MdnsService`` is the thin I/O part: it runs python-zeroconf's asyncio API
  on the reactor's own event loop (via ``meteremu.asyncbridge``) and says
  goodbye on stop.

Announcing is off unless the device says ``mdns: true`` or ``mdns: {…}``
(``mdns_options``).  Zeroconf sockets are limited to the configured (or
primary) interfaces, so a Raspberry Pi does not announce on ``docker0``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import ifaddr
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zeroconf import IPVersion, NonUniqueNameException
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from meteremu.asyncbridge import as_deferred, require_asyncio_reactor
from meteremu.devices.base import FaceIdentity
from meteremu.devices.shelly.identity import Identity
from meteremu.devices.shelly.options import MdnsOptions, mdns_options  # noqa: F401 (re-export)

HTTP_TYPE = "_http._tcp.local."
SHELLY_TYPE = "_shelly._tcp.local."
SERVICE_TYPES = (HTTP_TYPE, SHELLY_TYPE)

# Gen2 Pro devices run on an ESP32; emulators publish it and batteries that
# filter on it (Hame/Marstek, Hoymiles) expect this value.
ARCH = "esp32"

# RFC 5737 TEST-NET-1: never routed on the Internet and normally absent from
# a LAN, so connecting to it only asks the kernel which source address the
# default route would use.  A UDP connect() sends no packet.
DEFAULT_ROUTE_PROBE = ("192.0.2.1", 9)

_log = Logger()


class MdnsError(Exception):
    """mDNS cannot announce as configured; the message says what to change."""


# --- pure helpers -------------------------------------------------------------


def txt_properties(identity: Identity) -> dict[str, str]:
    """TXT keys of §5, taken from the identity so they agree with ``/shelly``.

    ``gen`` is what tells Gen2+ apart from Gen1 on ``_http._tcp``; ``id``,
    ``fw_id`` and ``arch`` are what Hame/Marstek and Hoymiles check; ``app``
    and ``ver`` match ``Shelly.GetDeviceInfo``. ``mac`` (colon-separated,
    upper case) and ``model`` are what the Solakon One looks for
    (batteries.md §1; shelly.md §5, uni-meter#267); no real device's TXT set
    is captured, so these follow the emulators batteries were seen to pair with.
    """
    return {
        "gen": str(identity.gen),
        "app": identity.app,
        "ver": identity.ver,
        "id": identity.device_id,
        "fw_id": identity.fw_id,
        "arch": ARCH,
        "mac": colon_mac(identity.mac),
        "model": identity.model,
    }


def colon_mac(mac: str) -> str:
    """``AABBCCDDEEFF`` as ``AA:BB:CC:DD:EE:FF``."""
    return ":".join(mac[i:i + 2] for i in range(0, len(mac), 2))


def instance_name(identity: Identity, service_type: str) -> str:
    """``<device id>.<type>``: HA reads the MAC back out of the device id."""
    return f"{identity.device_id}.{service_type}"


def server_name(hostname: str) -> str:
    """Fully qualified ``<host>.local.`` from ``foo``, ``foo.local`` or ``foo.local.``.

    Accepting all three spellings saves users from a config error that would
    otherwise only show up as "HA cannot resolve the host".
    """
    host = hostname.strip().rstrip(".")
    if host.lower().endswith(".local"):
        host = host[: -len(".local")]
    if not host or any(ch.isspace() for ch in host) or any(
        not 0 < len(label) <= 63 for label in host.split(".")
    ):
        raise MdnsError(f"mdns.hostname: not a usable host name: {hostname!r}")
    return f"{host}.local."


def build_service_infos(
    identity: Identity, port: int, hostname: str | None, addresses: Sequence[str]
) -> list[AsyncServiceInfo]:
    """The ``_http._tcp`` and ``_shelly._tcp`` records to register (no I/O).

    Both services share the instance name, host, port, addresses and TXT, as
    on a real device.  ``hostname`` defaults to the device id, which is what
    the real firmware announces.
    """
    server = server_name(hostname or identity.device_id)
    properties = txt_properties(identity)
    return [
        AsyncServiceInfo(
            service_type,
            instance_name(identity, service_type),
            port=port,
            properties=properties,
            server=server,
            parsed_addresses=list(addresses),
        )
        for service_type in SERVICE_TYPES
    ]


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _adapter_ips(adapter: ifaddr.Adapter) -> list[str]:
    """All addresses of an adapter as strings (ifaddr gives IPv6 as a tuple)."""
    return [ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip for ip in adapter.ips]


def resolve_interfaces(
    entries: Sequence[str], adapters: Iterable[ifaddr.Adapter], setting: str = "mdns.interfaces"
) -> list[str]:
    """Turn ``mdns.interfaces`` (names such as ``eth0`` or IP addresses) into IPs.

    A name gives that adapter's IPv4 addresses only: announcing over IPv6 is
    opt-in by listing an IPv6 address, so a name never silently switches
    zeroconf to dual-stack.  An IP must belong to one of the adapters, because
    zeroconf would otherwise skip the socket with only a debug log line and
    "announce" to nobody.  ``setting`` names the option in error messages.
    """
    adapters = list(adapters)
    by_name: dict[str, ifaddr.Adapter] = {}
    for adapter in adapters:
        by_name.setdefault(adapter.nice_name, adapter)
        by_name.setdefault(str(adapter.name), adapter)
    local_ips = {ipaddress.ip_address(ip) for a in adapters for ip in _adapter_ips(a)}
    resolved: list[str] = []
    for entry in entries:
        ip = _parse_ip(entry)
        if ip is not None:
            if ip not in local_ips:
                raise MdnsError(
                    f"{setting}: {entry} is not an address of this machine"
                    + ("" if setting == "mdns.interfaces" else
                       "; set mdns.interfaces to say which local interface announces it"))
            found = [str(ip)]
        elif entry in by_name:
            found = [ip for ip in _adapter_ips(by_name[entry]) if ":" not in ip]
            if not found:
                raise MdnsError(
                    f"{setting}: {entry} has no IPv4 address"
                    " (list its IPv6 address instead to announce over IPv6)")
        else:
            known = ", ".join(sorted({a.nice_name for a in adapters})) or "none"
            raise MdnsError(f"{setting}: no network interface named {entry!r} (known: {known})")
        resolved.extend(ip for ip in found if ip not in resolved)
    return resolved


def ip_version_for(ips: Sequence[str]) -> IPVersion:
    """IPv4 only unless an IPv6 address was asked for (zeroconf opens v6 sockets then)."""
    has_v6 = any(":" in ip for ip in ips)
    has_v4 = any(":" not in ip for ip in ips)
    if has_v6 and has_v4:
        return IPVersion.All
    return IPVersion.V6Only if has_v6 else IPVersion.V4Only


def default_ipv4(
    probe: tuple[str, int] = DEFAULT_ROUTE_PROBE,
    socket_factory: Callable[..., socket.socket] = socket.socket,
) -> str:
    """The IPv4 address the default route would use (the "primary" address).

    Connecting a UDP socket only selects a route and a source address; no
    packet is sent, so this is safe to call anywhere.  It is used only when
    neither ``mdns.addresses`` nor ``mdns.interfaces`` is configured.
    """
    sock = socket_factory(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect(probe)
        address = sock.getsockname()[0]
    except OSError as e:
        raise MdnsError(
            f"mdns: cannot find this machine's primary address ({e});"
            " set mdns.addresses or mdns.interfaces") from e
    finally:
        sock.close()
    if address in ("0.0.0.0", ""):
        raise MdnsError("mdns: no primary IPv4 address; set mdns.addresses or mdns.interfaces")
    return address


@dataclass(frozen=True)
class MdnsPlan:
    """Where to announce: A/AAAA records (``addresses``) and sockets (``interfaces``)."""

    addresses: tuple[str, ...]
    interfaces: tuple[str, ...]
    ip_version: IPVersion


def plan_mdns(
    options: MdnsOptions,
    adapters: Iterable[ifaddr.Adapter],
    default_address: Callable[[], str] = default_ipv4,
) -> MdnsPlan:
    """Decide addresses, interfaces and IP version from the options.

    * ``addresses`` given: announce those; sockets on ``interfaces`` if given,
      else on the addresses themselves.
    * only ``interfaces`` given: announce the interfaces' addresses.
    * neither: the primary address (``default_address``) for both.
    """
    addresses: list[str] = []
    for text in options.addresses:
        ip = _parse_ip(text)
        if ip is None or ip.is_unspecified:
            raise MdnsError(f"mdns.addresses: not a usable IP address: {text!r}")
        if str(ip) not in addresses:
            addresses.append(str(ip))
    interfaces = resolve_interfaces(options.interfaces, adapters) if options.interfaces else []
    if not addresses:
        addresses = list(interfaces) or [default_address()]
    if not interfaces:
        interfaces = resolve_interfaces(addresses, adapters, "mdns.addresses")
    return MdnsPlan(tuple(addresses), tuple(interfaces), ip_version_for(interfaces))


# --- the service --------------------------------------------------------------


class MdnsService(Service):
    """Announces the device's two DNS-SD services while running.

    ``ready`` fires (with ``None``) once both services have been probed and
    announced, and errbacks with ``MdnsError`` when they cannot be (unknown
    interface, name already taken on the network, socket errors), or with
    ``asyncio.CancelledError`` when the service is stopped first (nothing to
    report then: the process is already stopping).  The owner must
    attach an errback: per design.md §3 a failure to start stops the process.

    ``stopService`` sends goodbye packets (TTL 0) and closes zeroconf; twistd
    waits for the returned Deferred.  A service object is started once.

    The zeroconf instance is created inside a coroutine on the running loop,
    so it attaches to the reactor's loop instead of starting its own thread.
    ``zeroconf_factory``, ``get_adapters`` and ``default_address`` are
    injectable so tests can confine everything to loopback.

    Other faces (the EcoTracker) reuse the service with their own records:
    ``service_infos(port, hostname, addresses)`` builds them instead of the
    Shelly pair, and ``identity`` then only names the device in messages.
    """

    def __init__(
        self,
        identity: Identity | FaceIdentity,
        http_port: int | Callable[[], int],
        options: MdnsOptions,
        *,
        reactor: object = None,
        zeroconf_factory: Callable[..., AsyncZeroconf] = AsyncZeroconf,
        get_adapters: Callable[[], Iterable[ifaddr.Adapter]] = ifaddr.get_adapters,
        default_address: Callable[[], str] = default_ipv4,
        service_infos: Callable[[int, str | None, Sequence[str]], list[AsyncServiceInfo]] | None = None,
    ) -> None:
        self.identity = identity
        self._service_infos = service_infos
        # A callable is read at start: with port 0 the HTTP listener's real
        # port is only known once it listens.
        self._http_port = http_port
        self.port = options.port or (http_port if isinstance(http_port, int) else 0)
        self.options = options
        self.ready: Deferred[None] = Deferred()
        self.infos: list[AsyncServiceInfo] = []
        self._reactor = reactor
        self._zeroconf_factory = zeroconf_factory
        self._get_adapters = get_adapters
        self._default_address = default_address
        self._zeroconf: AsyncZeroconf | None = None
        self._task: asyncio.Future[None] | None = None

    def startService(self) -> None:
        super().startService()
        if not self.options.port and callable(self._http_port):
            self.port = self._http_port()
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor  # not at import time (twisted.md §1.2)
        try:
            require_asyncio_reactor(reactor)
        except RuntimeError as e:
            self.ready.errback(Failure(MdnsError(f"mdns: {e}")))
            return
        self._task = asyncio.ensure_future(self._register())
        as_deferred(self._task).chainDeferred(self.ready)

    async def _register(self) -> None:
        plan = plan_mdns(self.options, self._get_adapters(), self._default_address)
        if self._service_infos is not None:
            self.infos = self._service_infos(self.port, self.options.hostname, plan.addresses)
        else:
            assert isinstance(self.identity, Identity)  # the Shelly records need the full identity
            self.infos = build_service_infos(
                self.identity, self.port, self.options.hostname, plan.addresses)
        try:
            zc = self._zeroconf = self._zeroconf_factory(
                interfaces=list(plan.interfaces), ip_version=plan.ip_version)
            # allow_name_change=False: a renamed instance ("…-2") would break
            # HA's MAC-from-name rule, so a clash is a start failure instead.
            announced = [
                await zc.async_register_service(info, allow_name_change=False)
                for info in self.infos
            ]
            await asyncio.gather(*announced)
        except asyncio.CancelledError:
            raise  # stopService closes zeroconf
        except NonUniqueNameException as e:
            await self._close()
            raise MdnsError(
                f"mdns: {self.identity.device_id} is already announced on the network"
                " (another emulator or device with the same MAC?)") from e
        except Exception as e:
            await self._close()
            raise MdnsError(f"mdns: could not announce {self.identity.device_id}: {e!r}") from e
        _log.info(
            "mDNS: announcing {name} as {server} at {addresses} port {port} on {interfaces}",
            name=self.identity.device_id, server=self.infos[0].server,
            addresses=",".join(plan.addresses), port=self.port,
            interfaces=",".join(plan.interfaces))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._task is None:
            return succeed(None)
        return as_deferred(self._unregister())

    async def _unregister(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # let it unwind first
        await self._close()

    async def _close(self) -> None:
        """Goodbye packets for whatever got registered, then close the sockets."""
        zc, self._zeroconf = self._zeroconf, None
        if zc is None:
            return
        try:
            await zc.async_unregister_all_services()
        finally:
            await zc.async_close()
