"""Tests for meteremu.devices.shelly.mdns (specs/shelly.md §5, §9 check 31).

Names, TXT records, interface resolution and address planning are pure and
tested without sockets.  The service is tested twice: against a fake
zeroconf (failure paths), and for real on loopback, where a zeroconf browser
on this host must resolve both services and then see their goodbye.

Network rule for these tests: nothing may leave loopback.  Every real
zeroconf instance here is bound to ``interfaces=["127.0.0.1"]`` (IPv4 only)
and wrapped by ``LoopbackGuard``, which drops — and reports as a test failure
— any send that is not to a loopback address or not through a socket bound to
loopback.  A socket bound to 127.0.0.1 cannot emit packets on another
interface (the kernel refuses a loopback source there), so multicast sent
through it stays on ``lo``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
import socket
from collections.abc import Callable
from typing import Any

import ifaddr
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zeroconf import IPVersion, NonUniqueNameException, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from meteremu.asyncbridge import as_deferred
from meteremu.devices.shelly.identity import Identity, generate_mac, make_identity
from meteremu.devices.shelly.mdns import (
    DEFAULT_ROUTE_PROBE,
    HTTP_TYPE,
    SHELLY_TYPE,
    MdnsError,
    MdnsService,
    build_service_infos,
    default_ipv4,
    instance_name,
    ip_version_for,
    mdns_options,
    plan_mdns,
    resolve_interfaces,
    server_name,
    txt_properties,
)
from meteremu.devices.shelly.options import MdnsOptions, Options
from tests.support import is_asyncio

MAC = "C8F09E123456"
LOOPBACK = "127.0.0.1"
ASYNCIO_REACTOR = is_asyncio(reactor)
NEEDS_ASYNCIO = None if ASYNCIO_REACTOR else "needs: trial --reactor=asyncio"


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


class OptionsTests(SynchronousTestCase):
    def test_off_unless_asked_for(self) -> None:
        self.assertIsNone(mdns_options(False))
        self.assertIsNone(mdns_options(MdnsOptions(enabled=False, hostname="x")))
        self.assertEqual(mdns_options(True), MdnsOptions())
        custom = MdnsOptions(hostname="meter", interfaces=("eth0",))
        self.assertIs(mdns_options(custom), custom)

    def test_device_default_is_off(self) -> None:
        self.assertIsNone(mdns_options(Options().mdns))


class RecordTests(SynchronousTestCase):
    def test_txt_keys_of_spec_section_5(self) -> None:
        ident = identity()
        self.assertEqual(txt_properties(ident), {
            "gen": "2",
            "app": "Pro3EM",
            "ver": "1.6.1",
            "id": "shellypro3em-c8f09e123456",
            "fw_id": "20250508-110717/1.6.1-g8dbd358",
            "arch": "esp32",
        })

    def test_txt_follows_the_identity(self) -> None:
        ident = identity(gen=3, app="shellypro3em", fw_id="20240101-000000/1.2.3-gabc")
        txt = txt_properties(ident)
        self.assertEqual((txt["gen"], txt["app"], txt["ver"], txt["fw_id"]),
                         ("3", "shellypro3em", "1.2.3", "20240101-000000/1.2.3-gabc"))

    def test_two_services_named_after_the_device_id(self) -> None:
        ident = identity()
        infos = build_service_infos(ident, 80, None, ["192.168.1.20"])
        self.assertEqual([i.type for i in infos], [HTTP_TYPE, SHELLY_TYPE])
        self.assertEqual([i.name for i in infos], [
            "shellypro3em-c8f09e123456._http._tcp.local.",
            "shellypro3em-c8f09e123456._shelly._tcp.local.",
        ])
        for info in infos:
            self.assertEqual(info.server, "shellypro3em-c8f09e123456.local.")
            self.assertEqual(info.port, 80)
            self.assertEqual(info.parsed_addresses(), ["192.168.1.20"])
            self.assertEqual(decoded(info.properties), txt_properties(ident))

    def test_home_assistant_reads_the_mac_from_the_name(self) -> None:
        for mac in (MAC, "C8F09EABCDEF", generate_mac(random.Random(3))):
            ident = identity(mac)
            for service_type in (HTTP_TYPE, SHELLY_TYPE):
                name = instance_name(ident, service_type)
                self.assertEqual(ha_mac_from_name(name), mac.lower(), name)
                self.assertTrue(name.startswith("shellypro3em-"))

    def test_hostname_spellings(self) -> None:
        for spelling in ("meter", "meter.local", "meter.LOCAL.", " meter. "):
            self.assertEqual(server_name(spelling), "meter.local.", spelling)
        infos = build_service_infos(identity(), 8080, "garage-meter.local", [LOOPBACK])
        self.assertEqual({i.server for i in infos}, {"garage-meter.local."})

    def test_unusable_hostnames(self) -> None:
        for bad in ("", ".local", "my meter", "a" * 64, "a..b"):
            with self.assertRaises(MdnsError, msg=bad) as caught:
                server_name(bad)
            self.assertIn("mdns.hostname", str(caught.exception))

    def test_ipv6_address_gives_aaaa(self) -> None:
        infos = build_service_infos(identity(), 80, None, ["192.168.1.20", "fd00::5"])
        self.assertEqual(infos[0].parsed_addresses(IPVersion.V6Only), ["fd00::5"])
        self.assertEqual(infos[0].parsed_addresses(IPVersion.V4Only), ["192.168.1.20"])


class InterfaceTests(SynchronousTestCase):
    def test_name_gives_its_ipv4_addresses(self) -> None:
        self.assertEqual(resolve_interfaces(["eth0"], ADAPTERS), ["192.168.1.20", "192.168.1.21"])

    def test_addresses_of_this_machine_are_kept(self) -> None:
        self.assertEqual(resolve_interfaces(["172.17.0.1", "fd00::5", "fe80::1"], ADAPTERS),
                         ["172.17.0.1", "fd00::5", "fe80::1"])

    def test_duplicates_dropped_in_order(self) -> None:
        self.assertEqual(resolve_interfaces(["192.168.1.21", "eth0", "lo"], ADAPTERS),
                         ["192.168.1.21", "192.168.1.20", LOOPBACK])

    def test_unknown_name_lists_known_ones(self) -> None:
        with self.assertRaises(MdnsError) as caught:
            resolve_interfaces(["wlan0"], ADAPTERS)
        message = str(caught.exception)
        self.assertIn("'wlan0'", message)
        self.assertIn("docker0, eth0, lo, wg0", message)

    def test_foreign_address_rejected(self) -> None:
        with self.assertRaises(MdnsError) as caught:
            resolve_interfaces(["10.0.0.9"], ADAPTERS)
        self.assertIn("10.0.0.9 is not an address of this machine", str(caught.exception))

    def test_name_without_ipv4(self) -> None:
        with self.assertRaises(MdnsError) as caught:
            resolve_interfaces(["wg0"], ADAPTERS)
        self.assertIn("wg0 has no IPv4 address", str(caught.exception))

    def test_ip_version(self) -> None:
        self.assertEqual(ip_version_for(["192.168.1.20"]), IPVersion.V4Only)
        self.assertEqual(ip_version_for(["fd00::5"]), IPVersion.V6Only)
        self.assertEqual(ip_version_for(["192.168.1.20", "fd00::5"]), IPVersion.All)


class PlanTests(SynchronousTestCase):
    def test_defaults_use_the_primary_address(self) -> None:
        plan = plan_mdns(MdnsOptions(), ADAPTERS, lambda: "192.168.1.20")
        self.assertEqual(plan.addresses, ("192.168.1.20",))
        self.assertEqual(plan.interfaces, ("192.168.1.20",))
        self.assertEqual(plan.ip_version, IPVersion.V4Only)

    def test_interfaces_only(self) -> None:
        plan = plan_mdns(MdnsOptions(interfaces=("eth0",)), ADAPTERS, no_default)
        self.assertEqual(plan.addresses, ("192.168.1.20", "192.168.1.21"))
        self.assertEqual(plan.interfaces, ("192.168.1.20", "192.168.1.21"))

    def test_addresses_only_announce_on_those(self) -> None:
        plan = plan_mdns(MdnsOptions(addresses=("192.168.1.21",)), ADAPTERS, no_default)
        self.assertEqual((plan.addresses, plan.interfaces), (("192.168.1.21",), ("192.168.1.21",)))

    def test_addresses_and_interfaces(self) -> None:
        # e.g. a container announcing the host's address from its own interface
        options = MdnsOptions(addresses=("10.0.0.9",), interfaces=("lo",))
        plan = plan_mdns(options, ADAPTERS, no_default)
        self.assertEqual((plan.addresses, plan.interfaces), (("10.0.0.9",), (LOOPBACK,)))

    def test_foreign_address_without_interfaces_says_what_to_set(self) -> None:
        with self.assertRaises(MdnsError) as caught:
            plan_mdns(MdnsOptions(addresses=("10.0.0.9",)), ADAPTERS, no_default)
        self.assertIn("mdns.addresses: 10.0.0.9", str(caught.exception))
        self.assertIn("set mdns.interfaces", str(caught.exception))

    def test_ipv6_only_when_configured(self) -> None:
        plan = plan_mdns(MdnsOptions(addresses=("192.168.1.20", "fd00::5")), ADAPTERS, no_default)
        self.assertEqual(plan.ip_version, IPVersion.All)
        plan = plan_mdns(MdnsOptions(interfaces=("eth0",)), ADAPTERS, no_default)
        self.assertEqual(plan.ip_version, IPVersion.V4Only)  # eth0's fe80:: is not used

    def test_bad_addresses(self) -> None:
        for bad in ("eth0", "0.0.0.0", "300.1.1.1"):
            with self.assertRaises(MdnsError, msg=bad) as caught:
                plan_mdns(MdnsOptions(addresses=(bad,)), ADAPTERS, no_default)
            self.assertIn("mdns.addresses", str(caught.exception))


class FakeSocket:
    def __init__(self, name: tuple[str, int] | None = None, error: OSError | None = None) -> None:
        self.name, self.error = name, error
        self.connected: tuple[str, int] | None = None
        self.closed = False

    def __call__(self, family: int, kind: int) -> FakeSocket:
        assert (family, kind) == (socket.AF_INET, socket.SOCK_DGRAM)
        return self

    def connect(self, address: tuple[str, int]) -> None:
        if self.error:
            raise self.error
        self.connected = address

    def getsockname(self) -> tuple[str, int]:
        assert self.name is not None
        return self.name

    def close(self) -> None:
        self.closed = True


class DefaultAddressTests(SynchronousTestCase):
    def test_default_route_trick(self) -> None:
        fake = FakeSocket(("192.168.1.20", 40000))
        self.assertEqual(default_ipv4(socket_factory=fake), "192.168.1.20")  # type: ignore[arg-type]
        self.assertEqual(fake.connected, DEFAULT_ROUTE_PROBE)
        self.assertTrue(ipaddress.ip_address(DEFAULT_ROUTE_PROBE[0])
                        in ipaddress.ip_network("192.0.2.0/24"))  # TEST-NET-1
        self.assertTrue(fake.closed)

    def test_no_route(self) -> None:
        fake = FakeSocket(error=OSError(101, "Network is unreachable"))
        with self.assertRaises(MdnsError) as caught:
            default_ipv4(socket_factory=fake)  # type: ignore[arg-type]
        self.assertIn("set mdns.addresses or mdns.interfaces", str(caught.exception))
        self.assertTrue(fake.closed)

    def test_unbound_result_rejected(self) -> None:
        with self.assertRaises(MdnsError):
            default_ipv4(socket_factory=FakeSocket(("0.0.0.0", 0)))  # type: ignore[arg-type]

    def test_real_socket_sends_nothing(self) -> None:
        # connect() on UDP only picks a route; aimed at loopback to stay local.
        self.assertEqual(default_ipv4(probe=(LOOPBACK, 9)), LOOPBACK)


class FakeAsyncZeroconf:
    """Stands in for AsyncZeroconf to drive the service's failure paths."""

    def __init__(self, register: Callable[[AsyncServiceInfo], Any], **kwargs: Any) -> None:
        self.kwargs = kwargs
        self._register = register
        self.registered: list[str] = []
        self.unregistered_all = False
        self.closed = False

    async def async_register_service(self, info: AsyncServiceInfo,
                                     allow_name_change: bool = False) -> Any:
        assert not allow_name_change, "a renamed instance breaks HA's MAC rule"
        await self._register(info)
        self.registered.append(info.name)
        return asyncio.sleep(0)

    async def async_unregister_all_services(self) -> None:
        self.unregistered_all = True

    async def async_close(self) -> None:
        self.closed = True


class ServiceWithFakeZeroconfTests(TestCase):
    skip = NEEDS_ASYNCIO
    timeout = 10

    def make(self, register: Callable[[AsyncServiceInfo], Any],
             options: MdnsOptions | None = None) -> tuple[MdnsService, list[FakeAsyncZeroconf]]:
        made: list[FakeAsyncZeroconf] = []

        def factory(**kwargs: Any) -> FakeAsyncZeroconf:
            made.append(FakeAsyncZeroconf(register, **kwargs))
            return made[-1]

        service = MdnsService(
            identity(), 8080, options or MdnsOptions(interfaces=(LOOPBACK,)),
            zeroconf_factory=factory,  # type: ignore[arg-type]
            get_adapters=lambda: ADAPTERS, default_address=no_default)
        return service, made

    @inlineCallbacks
    def test_registers_both_then_says_goodbye(self) -> Any:
        async def ok(info: AsyncServiceInfo) -> None:
            return None

        service, made = self.make(ok, MdnsOptions(interfaces=("eth0",), port=80))
        service.startService()
        yield service.ready
        [zc] = made
        self.assertEqual(zc.kwargs, {"interfaces": ["192.168.1.20", "192.168.1.21"],
                                     "ip_version": IPVersion.V4Only})
        self.assertEqual(zc.registered, [instance_name(service.identity, t)
                                         for t in (HTTP_TYPE, SHELLY_TYPE)])
        self.assertEqual({i.port for i in service.infos}, {80})  # options.port wins
        yield service.stopService()
        self.assertTrue(zc.unregistered_all and zc.closed)
        self.assertFalse(service.running)

    @inlineCallbacks
    def test_http_port_by_default(self) -> Any:
        async def ok(info: AsyncServiceInfo) -> None:
            return None

        service, _ = self.make(ok)
        service.startService()
        yield service.ready
        self.assertEqual({i.port for i in service.infos}, {8080})
        yield service.stopService()

    @inlineCallbacks
    def test_name_clash_fails_ready_and_closes(self) -> Any:
        async def clash(info: AsyncServiceInfo) -> None:
            raise NonUniqueNameException(info.name)

        service, made = self.make(clash)
        service.startService()
        error = yield self.assertFailure(service.ready, MdnsError)
        self.assertIn("shellypro3em-c8f09e123456 is already announced", str(error))
        self.assertTrue(made[0].closed)
        yield service.stopService()

    @inlineCallbacks
    def test_socket_error_fails_ready(self) -> Any:
        async def broken(info: AsyncServiceInfo) -> None:
            raise OSError(99, "Cannot assign requested address")

        service, made = self.make(broken)
        service.startService()
        error = yield self.assertFailure(service.ready, MdnsError)
        self.assertIn("could not announce", str(error))
        self.assertTrue(made[0].closed)
        yield service.stopService()

    @inlineCallbacks
    def test_unknown_interface_fails_before_any_socket(self) -> Any:
        async def ok(info: AsyncServiceInfo) -> None:
            return None

        service, made = self.make(ok, MdnsOptions(interfaces=("wlan0",)))
        service.startService()
        error = yield self.assertFailure(service.ready, MdnsError)
        self.assertIn("no network interface named 'wlan0'", str(error))
        self.assertEqual(made, [])
        yield service.stopService()

    @inlineCallbacks
    def test_stop_while_probing(self) -> Any:
        started: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        never: asyncio.Future[None] = asyncio.get_event_loop().create_future()

        async def hang(info: AsyncServiceInfo) -> None:
            started.set_result(None)
            await never

        service, made = self.make(hang)
        service.startService()
        yield Deferred.fromFuture(started)
        yield service.stopService()
        yield self.assertFailure(service.ready, asyncio.CancelledError)
        self.assertTrue(never.cancelled())  # probing was interrupted, not awaited
        self.assertTrue(made[0].unregistered_all and made[0].closed)


class ServiceReactorCheckTests(TestCase):
    """Works under any reactor: the check itself is what is tested."""

    @inlineCallbacks
    def test_other_reactor_fails_ready_clearly(self) -> Any:
        service = MdnsService(identity(), 80, MdnsOptions(), reactor=object(),
                              zeroconf_factory=no_default)  # type: ignore[arg-type]
        service.startService()
        error = yield self.assertFailure(service.ready, MdnsError)
        self.assertIn("asyncio reactor", str(error))
        yield service.stopService()


# --- real zeroconf on loopback -------------------------------------------------


def loopback_multicast_problem() -> str | None:
    """Why mDNS multicast cannot work on lo here, or None if it can.

    Sends one datagram to the mDNS group through a socket bound to 127.0.0.1
    with IP_MULTICAST_IF=127.0.0.1 (so it cannot leave lo), to a receiver that
    joined the group on 127.0.0.1.  Delivery is synchronous on lo, so a short
    receive timeout only matters when it fails.
    """
    group = "224.0.0.251"
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("", 0))
        receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                            socket.inet_aton(group) + socket.inet_aton(LOOPBACK))
        sender.bind((LOOPBACK, 0))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sender.sendto(b"meteremu-probe", (group, receiver.getsockname()[1]))
        receiver.settimeout(1.0)
        data, _ = receiver.recvfrom(64)
        return None if data == b"meteremu-probe" else "unexpected datagram on lo"
    except OSError as e:
        return f"multicast to {group} on lo (127.0.0.1) is not possible here: {e}"
    finally:
        receiver.close()
        sender.close()


class LoopbackGuard:
    """Builds real AsyncZeroconf instances that cannot send beyond loopback."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.sent = 0
        self.made: list[AsyncZeroconf] = []

    def factory(self, **kwargs: Any) -> AsyncZeroconf:
        interfaces = kwargs.get("interfaces")
        if interfaces != [LOOPBACK] or kwargs.get("ip_version") != IPVersion.V4Only:
            raise AssertionError(f"refusing zeroconf outside loopback: {kwargs!r}")
        azc = AsyncZeroconf(**kwargs)
        zc = azc.zeroconf
        send = zc.async_send

        def guarded(out: Any, addr: str | None = None, port: int = 5353,
                    v6_flow_scope: Any = (), transport: Any = None) -> None:
            if addr is not None:
                ok = ipaddress.ip_address(addr).is_loopback
            else:  # multicast: only through sockets bound to loopback
                senders = [transport] if transport is not None else zc.engine.senders
                ok = all(ipaddress.ip_address(t.sock_name[0]).is_loopback for t in senders)
            if not ok:
                self.violations.append(f"blocked send to {addr or 'multicast'}:{port}")
                return
            self.sent += 1
            send(out, addr, port, v6_flow_scope, transport)

        zc.async_send = guarded  # type: ignore[method-assign]
        self.made.append(azc)
        return azc


class Watcher:
    """Collects browser events as futures, so tests wait on them with a timeout."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, ServiceStateChange], asyncio.Future[None]] = {}

    def _future(self, name: str, change: ServiceStateChange) -> asyncio.Future[None]:
        key = (name.lower(), change)
        if key not in self._events:
            self._events[key] = asyncio.get_event_loop().create_future()
        return self._events[key]

    def handler(self, zeroconf: Any, service_type: str, name: str,
                state_change: ServiceStateChange) -> None:
        future = self._future(name, state_change)
        if not future.done():
            future.set_result(None)

    async def wait(self, name: str, change: ServiceStateChange, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._future(name, change)), timeout)
        except TimeoutError:
            raise AssertionError(f"no {change.name} for {name} within {timeout} s") from None


class LoopbackAnnouncementTests(TestCase):
    """A zeroconf browser on this host resolves what MdnsService announces on lo."""

    skip = NEEDS_ASYNCIO
    timeout = 60

    def setUp(self) -> None:
        problem = loopback_multicast_problem()
        if problem:
            self.skipTest(problem)
        self.guard = LoopbackGuard()
        self.addCleanup(self.assert_stayed_on_loopback)

    def assert_stayed_on_loopback(self) -> None:
        self.assertEqual(self.guard.violations, [])

    @inlineCallbacks
    def test_resolves_both_services_then_sees_goodbye(self) -> Any:
        # A fresh MAC per run: parallel runs on the same host must not clash.
        ident = identity(generate_mac())
        names = [instance_name(ident, t) for t in (HTTP_TYPE, SHELLY_TYPE)]
        watcher = Watcher()

        async def start_browser() -> tuple[AsyncZeroconf, AsyncServiceBrowser]:
            # Inside a coroutine, so zeroconf uses the reactor's loop, not a thread.
            zc = self.guard.factory(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
            return zc, AsyncServiceBrowser(zc.zeroconf, [HTTP_TYPE, SHELLY_TYPE],
                                           handlers=[watcher.handler])

        browser_zc, browser = yield as_deferred(start_browser())
        self.addCleanup(lambda: as_deferred(browser_zc.async_close()))
        self.addCleanup(lambda: as_deferred(browser.async_cancel()))

        service = MdnsService(
            ident, 18080, MdnsOptions(interfaces=(LOOPBACK,)),
            zeroconf_factory=self.guard.factory)
        self.addCleanup(lambda: service.stopService() if service.running else None)
        service.startService()
        yield service.ready.addTimeout(20, reactor)
        self.assertEqual([i.name for i in service.infos], names)
        announcer = self.guard.made[-1]
        self.assertIsNot(announcer, browser_zc)
        self.assertIs(announcer.zeroconf.loop, asyncio.get_event_loop())  # no zeroconf thread

        for name in names:
            yield as_deferred(watcher.wait(name, ServiceStateChange.Added, 10))
        for service_type, name in zip((HTTP_TYPE, SHELLY_TYPE), names, strict=True):
            info = AsyncServiceInfo(service_type, name)
            found = yield as_deferred(info.async_request(browser_zc.zeroconf, 5000))
            self.assertTrue(found, f"{name} did not resolve")
            self.assertEqual(info.port, 18080)
            self.assertEqual(info.parsed_addresses(), [LOOPBACK])
            self.assertEqual(info.server, f"{ident.device_id}.local.")
            txt = decoded(info.properties)
            self.assertEqual(txt, txt_properties(ident))
            self.assertEqual((txt["gen"], txt["app"], txt["arch"]), ("2", "Pro3EM", "esp32"))
            self.assertEqual(ha_mac_from_name(info.name), ident.mac.lower())

        self.assertGreater(self.guard.sent, 0)  # the guard did see the traffic
        yield service.stopService().addTimeout(10, reactor)
        for name in names:
            yield as_deferred(watcher.wait(name, ServiceStateChange.Removed, 10))
        # The goodbye emptied the browser's cache: nothing left to answer from.
        for service_type, name in zip((HTTP_TYPE, SHELLY_TYPE), names, strict=True):
            self.assertFalse(AsyncServiceInfo(service_type, name).load_from_cache(
                browser_zc.zeroconf))

