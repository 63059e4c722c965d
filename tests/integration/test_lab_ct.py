"""The battery lab with two Venus E over real UDP: a CT002 with active control, and the Shelly face's control.

Real mosquitto, a whole meteremu on loopback ports, each battery a real
socket on its own 127.0.0.x address. 12 s of real time each: a 2 kW step at
2.4 s that two Venus set to 1.2 kW discharge can carry. Tolerance: every
battery answered on at least 80 % of its polls (the first polls come before
the meter's first reading), and 9 s after the step the two cover at least
1.5 kW of it.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from meteremu.lab.battery import BatterySpec
from meteremu.lab.household import Appliance, HouseholdSpec
from meteremu.lab.meterpath import TOPIC, meteremu_config
from meteremu.lab.realtime import free_port, parse_feed, parse_target, run_realtime
from meteremu.lab.runner import setup_for
from meteremu.lab.scenario import Scenario
from tests.support import start_app
from tests.support.mosquitto import Mosquitto, mosquitto_skip

PAIR = Scenario("ci_pair", "two Venus E, a 2 kW step", 12.0,
                HouseholdSpec(noise=0.0, appliances=(Appliance("step", 0.2, power=2000.0, duration=100.0,
                                                               jitter=0.0),)),
                (BatterySpec("venus", max_discharge=1200.0),
                 BatterySpec("venus", phase=1, cadence=0.5, max_discharge=1200.0)))


class TwoVenusTests(TestCase):
    skip = mosquitto_skip()
    timeout = 60

    def check(self, loop) -> None:  # type: ignore[no-untyped-def]
        for battery in loop.batteries:
            self.assertGreaterEqual(battery.answers, 0.8 * battery.polls, battery.mac)
        self.assertGreater(sum(p[-1] for p in loop.trace.power), 1500.0)

    @inlineCallbacks
    def test_ct002_by_address(self) -> object:
        """A marstek_ct002 the test runs, reached only by ``ct://`` and ``mqtt://`` (as a peer's would be)."""
        broker = Mosquitto(self)
        yield broker.start()
        setup = setup_for(PAIR, "ct002")
        ct_port = free_port(socket.SOCK_DGRAM)
        config = meteremu_config(setup, broker.port, (), state_dir=os.path.abspath(self.mktemp()), ct_port=ct_port)
        os.makedirs(config.store.path.rsplit("/", 1)[0], exist_ok=True)
        app = yield start_app(self, config)
        loop = yield run_realtime(PAIR, 0, setup, reactor, (parse_target(f"ct://127.0.0.1:{ct_port}"),),
                                  parse_feed(f"mqtt://127.0.0.1:{broker.port}/{TOPIC}"))
        self.check(loop)
        overview = app.overview()["devices"]["0"]
        self.assertEqual(overview["model"], "HME-4")
        self.assertEqual(sorted(overview["active_batteries"]), sorted(b.mac for b in loop.batteries))
        self.assertEqual({b["path"] for b in overview["control"]["batteries"]}, {"reported"})

    @inlineCallbacks
    def test_shelly_control(self) -> object:
        loop = yield run_realtime(PAIR, 0, setup_for(PAIR, "control"), reactor)
        self.check(loop)
