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
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase
from zeroconf import IPVersion, NonUniqueNameException, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from meteremu.asyncbridge import as_deferred
from meteremu.devices.shelly.identity import generate_mac
from meteremu.devices.shelly.mdns import (
    HTTP_TYPE,
    SHELLY_TYPE,
    MdnsError,
    MdnsService,
    instance_name,
    txt_properties,
)
from meteremu.devices.shelly.options import MdnsOptions
from tests.support import is_asyncio
from tests.support.shared.mdns import (
    ADAPTERS,
    LOOPBACK,
    decoded,
    ha_mac_from_name,
    identity,
    no_default,
)

ASYNCIO_REACTOR = is_asyncio(reactor)


NEEDS_ASYNCIO = None if ASYNCIO_REACTOR else "needs: trial --reactor=asyncio"


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
            self.assertEqual(txt["mac"].replace(":", ""), ident.mac)  # Solakon: AA:BB:… (§1)
            self.assertEqual(ha_mac_from_name(info.name), ident.mac.lower())

        self.assertGreater(self.guard.sent, 0)  # the guard did see the traffic
        yield service.stopService().addTimeout(10, reactor)
        for name in names:
            yield as_deferred(watcher.wait(name, ServiceStateChange.Removed, 10))
        # The goodbye emptied the browser's cache: nothing left to answer from.
        for service_type, name in zip((HTTP_TYPE, SHELLY_TYPE), names, strict=True):
            self.assertFalse(AsyncServiceInfo(service_type, name).load_from_cache(
                browser_zc.zeroconf))
