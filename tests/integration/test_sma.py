"""The SMA Energy Meter face sending to a unicast receiver on loopback, decoded by pysma-plus.

Multicast is tested only inside the suite's own namespaces
(``tests.system.test_lan``): joining a group here would talk IGMP on the
host's network.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from tests.support import sample_reading, start_app, test_config
from tests.support.speedwire import decode

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h"}}}


class Receiver(DatagramProtocol):
    def __init__(self, wanted: int) -> None:
        self.datagrams: list[tuple[bytes, tuple[str, int]]] = []
        self.wanted = wanted
        self.done: Deferred[None] = Deferred()

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.append((datagram, addr))
        if len(self.datagrams) == self.wanted and not self.done.called:
            self.done.callback(None)


class SmaUnicastTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_datagrams_to_a_unicast_receiver_decode(self):
        receiver = Receiver(wanted=2)
        port = reactor.listenUDP(0, receiver, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        config = test_config(self.mktemp(), meters=SIM, devices=[{
            "type": "sma_energy_meter", "serial": 1901234567, "susy_id": 349,
            "destinations": ["127.0.0.1"], "port": port.getHost().port, "interval": "100ms"}])
        app = yield start_app(self, config)
        meter = app.meters["grid"]
        meter.update(sample_reading(meter.latest.measured_at + 1))
        yield receiver.done
        decoded = [decode(data, addr) for data, addr in receiver.datagrams]
        self.assertEqual({(d["serial"], d["susyid"]) for d in decoded}, {(1901234567, 349)})
        last = decoded[-1]
        self.assertEqual(last["1:4:0"] - last["2:4:0"], round(meter.latest.total_act_power * 10))
        self.assertEqual(app.devices[0].identity.device_id, "sma-em-1901234567")

    @inlineCallbacks
    def test_a_down_meter_falls_silent_and_comes_back(self):
        receiver = Receiver(wanted=1)
        port = reactor.listenUDP(0, receiver, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        config = test_config(self.mktemp(), meters=SIM, devices=[{
            "type": "sma_energy_meter", "destinations": ["127.0.0.1"], "port": port.getHost().port,
            "interval": "100ms"}])
        app = yield start_app(self, config)
        service = app.device_services[0]
        meter = app.meters["grid"]
        meter.report_failure("test: unplugged")
        sent = service.sender.sent
        service.sender.send()
        self.assertIn("unplugged", service.device.silent_reason)
        self.assertEqual(service.sender.sent, sent)  # nothing old went out
        meter.update(sample_reading(meter.latest.measured_at + 1))
        service.sender.send()
        self.assertIsNone(service.device.silent_reason)
        self.assertEqual(service.sender.sent, sent + 1)
        yield receiver.done
        # The serial was generated once and kept (a receiver pairs with it).
        self.assertEqual(decode(receiver.datagrams[0][0])["serial"], service.device.serial)

    def test_bad_config_is_named(self):
        from meteremu.config import ConfigError

        err = self.assertRaises(ConfigError, test_config, self.mktemp(), meters=SIM,
                                devices=[{"type": "sma_energy_meter", "destinations": ["example.org"]}])
        self.assertIn("destinations", str(err))


class SmaBesideOtherFacesTests(TestCase):
    def test_no_http_port_is_claimed(self):
        """The SMA face serves no HTTP: it never clashes with a Shelly on server.http_port."""
        config = test_config(self.mktemp(), meters=SIM, devices=[
            {"type": "shelly_pro_3em"}, {"type": "sma_energy_meter", "destinations": ["127.0.0.1"]}])
        self.assertEqual([d.type for d in config.devices], ["shelly_pro_3em", "sma_energy_meter"])
