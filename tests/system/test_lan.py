"""meteremu on a real (namespaced) LAN: broadcast discovery, mDNS over multicast, every face.

meteremu runs as a twistd process in the namespace ``meter``; the clients
(``tests.support.lan_clients``: a Marstek-style poller, python-zeroconf,
everHome's ``ecotracker``, pysma-plus) run in ``battery``, ``hass`` and
``inverter``, so every datagram crosses veth pairs and a bridge as on a home
network. The LAN has
no route out (``tests.support.netns``); without root the tests skip.
"""

from __future__ import annotations

import errno
import json
import os
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support.netns import IP, Lan, lan
from tests.support.twistd import RUN, spawn, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAC = "B827EB0A1B2C"

SHELLY = f"""
devices:
  - type: shelly_pro_3em
    mac: "{MAC}"
    udp_ports: [1010]
    udp_bind: 0.0.0.0
    mdns: {{interfaces: [eth0]}}
"""

ECOTRACKER = """
devices:
  - type: everhome_ecotracker
    mac: "B43A452249C9"
    mdns: {interfaces: [eth0]}
"""

SMA = """
devices:
  - type: sma_energy_meter
    serial: 1901234567
    susy_id: 349
    interface: eth0
"""


@inlineCallbacks
def run_client(case: TestCase, net: Lan, host: str, *args: str):
    """Run a ``lan_clients`` client in ``host``'s namespace; its JSON result."""
    argv = net.exec_argv(host, [sys.executable, "-m", "tests.support.lan_clients", *args])
    out, err, code = yield getProcessOutputAndValue(argv[0], argv[1:], env={"PATH": os.environ["PATH"]},
                                                    path=ROOT)
    case.assertEqual(code, 0, f"{args[0]} client failed: {err.decode(errors='replace')}")
    return json.loads(out)


class LanCase(TestCase):
    timeout = 120

    @inlineCallbacks
    def start_meter(self, extra: str):
        net = lan(self, "meter", "battery", "hass", "inverter")
        directory = os.path.abspath(self.mktemp())
        path = write_config(directory, port=8080, extra=extra)
        with open(path, encoding="utf-8") as handle:
            config = handle.read().replace("host: 127.0.0.1", "host: 0.0.0.0")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(config)
        proto = spawn(self, [*RUN, "--config", path], directory, wrap=net.exec_argv("meter", []))
        try:
            yield proto.serving()
        except Exception:
            self.fail(f"meteremu did not start: {proto.output.decode(errors='replace')[-2000:]}")
        return net


class IsolationTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_the_lan_has_no_way_out(self):
        """No default route in any namespace: an address off the LAN is unreachable."""
        net = lan(self, "a", "b")
        code = ("import socket\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "try:\n"
                "    s.connect(('192.0.2.1', 9))\n"
                "except OSError as e:\n"
                "    print(e.errno)\n")
        argv = net.exec_argv("a", [sys.executable, "-c", code])
        out, err, status = yield getProcessOutputAndValue(argv[0], argv[1:], env={"PATH": os.environ["PATH"]})
        self.assertEqual((status, out.strip()), (0, str(errno.ENETUNREACH).encode()), err)
        argv = net.exec_argv("a", [IP, "route", "show", "default"])
        out, _, _ = yield getProcessOutputAndValue(argv[0], argv[1:], env={"PATH": os.environ["PATH"]})
        self.assertEqual(out.strip(), b"")


class ShellyOnTheLanTests(LanCase):
    @inlineCallbacks
    def test_marstek_broadcasts_then_polls_unicast(self):
        """The first broadcast answer tells the battery where the meter is; it polls there."""
        net = yield self.start_meter(SHELLY)
        result = yield run_client(self, net, "battery", "marstek", "1010", "3")
        self.assertEqual(result["meter"], net.hosts["meter"])
        self.assertEqual(result["first"]["src"], f"shellypro3em-{MAC.lower()}")
        self.assertIn("total_act_power", result["first"]["result"])
        self.assertEqual([a["from"] for a in result["unicast"]], [net.hosts["meter"]] * 3)
        ids = [a["reply"]["id"] for a in result["unicast"]]
        self.assertEqual(len(set(ids)), 3)  # each poll answered by its own reply
        for answer in result["unicast"]:
            self.assertIsInstance(answer["reply"]["result"]["total_act_power"], float)

    @inlineCallbacks
    def test_mdns_over_multicast(self):
        """A zeroconf browser in another namespace resolves both Shelly services with TXT."""
        net = yield self.start_meter(SHELLY)
        result = yield run_client(self, net, "hass", "mdns", "_shelly._tcp.local.", "_http._tcp.local.")
        device_id = f"shellypro3em-{MAC.lower()}"
        for service_type in ("_shelly._tcp.local.", "_http._tcp.local."):
            [entry] = result[service_type]
            self.assertEqual(entry["name"], f"{device_id}.{service_type}")
            self.assertEqual(entry["server"], f"{device_id}.local.")
            self.assertEqual(entry["addresses"], [net.hosts["meter"]])
            self.assertEqual(entry["port"], 8080)
            txt = entry["properties"]
            self.assertEqual(txt["id"], device_id)
            self.assertEqual(txt["gen"], "2")
            self.assertEqual(txt["app"], "Pro3EM")
            self.assertEqual(txt["arch"], "esp32")
            # Solakon One (batteries.md §1): TXT mac as AA:BB:…, and the model.
            self.assertEqual(txt["mac"].replace(":", ""), device_id.rsplit("-", 1)[1].upper())
            self.assertRegex(txt["mac"], r"^([0-9A-F]{2}:){5}[0-9A-F]{2}$")
            self.assertEqual(txt["model"], "SPEM-003CEBEU")


class EcoTrackerOnTheLanTests(LanCase):
    @inlineCallbacks
    def test_found_over_mdns_and_read_with_everhomes_client(self):
        """The EcoFlow app's way: browse _everhome._tcp, take ip from TXT, GET /v1/json."""
        net = yield self.start_meter(ECOTRACKER)
        result = yield run_client(self, net, "hass", "mdns", "_everhome._tcp.local.")
        [entry] = result["_everhome._tcp.local."]
        self.assertEqual(entry["name"], "ecotracker-B43A452249C9._everhome._tcp.local.")
        self.assertEqual(entry["server"], "ecotracker-B43A452249C9.local.")
        self.assertEqual(entry["properties"], {"ip": net.hosts["meter"], "serial": "b43a452249c9",
                                               "productid": "1137"})
        data = yield run_client(self, net, "battery", "ecotracker", entry["properties"]["ip"],
                                str(entry["port"]))
        self.assertEqual(set(data), {"power", "powerAvg", "powerPhase1", "powerPhase2", "powerPhase3",
                                     "energyCounterIn", "energyCounterOut"})
        self.assertIsInstance(data["power"], int)


class SmaOnTheLanTests(LanCase):
    @inlineCallbacks
    def test_speedwire_multicast_is_received_in_another_namespace(self):
        """pysma-plus joins 239.12.255.254 on its own interface and decodes our datagrams."""
        net = yield self.start_meter(SMA)
        result = yield run_client(self, net, "inverter", "sma", net.hosts["inverter"])
        self.assertEqual(result["serial"], [1901234567])
        self.assertEqual(result["data"]["susyid"], 349)
        self.assertEqual(result["data"]["ip"].split(":")[0], net.hosts["meter"])
        sensors = result["sensors"]
        for name in ("metering_power_absorbed", "metering_power_supplied", "metering_frequency",
                     "metering_voltage_l1", "metering_current_l3", "metering_total_absorbed"):
            self.assertIsNotNone(sensors[name], name)
        self.assertGreater(sensors["metering_voltage_l1"], 0)

    @inlineCallbacks
    def test_the_sma_energy_meter_source_reads_the_multicast_in_another_namespace(self):
        """meteremu's sma_energy_meter source joins the group on its own interface and reads our face."""
        net = yield self.start_meter(SMA)
        result = yield run_client(self, net, "inverter", "sma_source", "eth0", "1901234567")
        self.assertGreaterEqual(result["samples"], 3)
        self.assertEqual((result["state"], result["freshness"]), ("listening", "fresh"))
        self.assertEqual(result["heard"], [1901234567])
        self.assertEqual(result["details"]["sender"].split(":")[0], net.hosts["meter"])
        self.assertEqual(result["details"]["susy_id"], 349)
        self.assertEqual(len(result["phases"]), 3)
        self.assertGreater(result["phases"][0][1], 0)  # a voltage
