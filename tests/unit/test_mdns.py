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

import ipaddress
import random
import socket

from twisted.trial.unittest import SynchronousTestCase
from zeroconf import IPVersion

from meteremu.devices.shelly.identity import generate_mac
from meteremu.devices.shelly.mdns import (
    DEFAULT_ROUTE_PROBE,
    HTTP_TYPE,
    SHELLY_TYPE,
    MdnsError,
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
from tests.support.shared.mdns import (
    ADAPTERS,
    LOOPBACK,
    MAC,
    decoded,
    ha_mac_from_name,
    identity,
    no_default,
)


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
            "mac": "C8:F0:9E:12:34:56",
            "model": "SPEM-003CEBEU",
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
