"""The sma_energy_meter source on real sockets: meteremu's own SMA face sends to it over loopback unicast.

Multicast is tested only inside the suite's own namespaces
(``tests.system.test_lan``): joining a group here would talk IGMP on the
host's network.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from meteremu.meter import Freshness, Meter
from meteremu.reading import Reading
from tests.support import sample_reading, start_app, test_config
from tests.support.docker import free_port

SIM = {"source": {"type": "simulator", "interval": "1h"}}


def grid(port: int, **kw: Any) -> dict[str, Any]:
    return {"source": {"type": "sma_energy_meter", "mode": "unicast", "listen": "127.0.0.1", "port": port,
                       "interval": "100ms", "retry": "100ms", **kw}, "stale_after": "1h"}


def face(meter: str, serial: int, port: int) -> dict[str, Any]:
    return {"type": "sma_energy_meter", "meter": meter, "serial": serial, "destinations": ["127.0.0.1"],
            "port": port, "interval": "100ms"}


@inlineCallbacks
def until(condition: Callable[[], bool], what: str, tries: int = 300):
    """Let the reactor run until ``condition`` holds (bounded by the number of turns, not by a time)."""
    for _ in range(tries):
        if condition():
            return
        yield deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"never: {what}")


def reading_like(meter: Meter, expected: Reading) -> Deferred[None]:
    return until(lambda: meter.latest is not None and all(
        abs(a.act_power - b.act_power) < 0.06 for a, b in zip(meter.latest.phases, expected.phases, strict=True)),
        f"{meter.name} reads {expected.powers()}")


class SmaSourceTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def start(self, meters: dict[str, Any], devices: list[dict[str, Any]]):
        app = yield start_app(self, test_config(self.mktemp(), meters=meters, devices=devices))
        return app

    def set(self, app: Any, name: str, powers: tuple[float, float, float]) -> Reading:
        meter = app.meters[name]
        reading = sample_reading(meter.latest.measured_at + 1, powers=powers)
        meter.update(reading)
        return reading

    @inlineCallbacks
    def test_reads_meteremus_own_face(self):
        port = free_port(socket.SOCK_DGRAM)
        app = yield self.start({"house": SIM, "grid": grid(port, serial=1901234567)},
                               [face("house", 1901234567, port)])
        sent = self.set(app, "house", (1234.5, -300.0, 0.0))
        yield reading_like(app.meters["grid"], sent)
        meter = app.meters["grid"]
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        self.assertEqual((meter.details["serial"], meter.details["susy_id"]), (1901234567, 270))
        latest = meter.latest
        self.assertAlmostEqual(latest.phases[0].voltage, 227.0, places=3)
        self.assertIsNotNone(latest.energy)

    @inlineCallbacks
    def test_several_meters_on_one_port(self):
        port = free_port(socket.SOCK_DGRAM)
        app = yield self.start({"house": SIM, "other": SIM, "grid": grid(port, serial=1901234568)},
                               [face("house", 1901234567, port), face("other", 1901234568, port)])
        self.set(app, "house", (1111.0, 0.0, 0.0))
        wanted = self.set(app, "other", (-2222.0, 10.0, 20.0))
        meter = app.meters["grid"]
        yield until(lambda: len(meter.details.get("heard", {})) == 2, "both meters heard")
        yield reading_like(meter, wanted)
        source = app.sources["grid"]
        samples = source.samples
        yield until(lambda: source.samples > samples + 3, "more samples")
        yield reading_like(meter, wanted)  # never the other meter's

    @inlineCallbacks
    def test_without_a_serial_several_meters_mean_down(self):
        port = free_port(socket.SOCK_DGRAM)
        app = yield self.start({"house": SIM, "other": SIM, "grid": grid(port)},
                               [face("house", 1901234567, port), face("other", 1901234568, port)])
        meter = app.meters["grid"]
        yield until(lambda: meter.freshness() == Freshness.DOWN, "down")
        self.assertIn("set source.serial", meter.down_reason or "")

    @inlineCallbacks
    def test_garbage_datagrams_are_ignored(self):
        port = free_port(socket.SOCK_DGRAM)
        app = yield self.start({"house": SIM, "grid": grid(port, serial=1901234567)},
                               [face("house", 1901234567, port)])
        source = app.sources["grid"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
            for data in (b"SMA\0\0\4\2\xa0", b"\xff" * 600, b"GET / HTTP/1.1\r\n\r\n"):
                junk.sendto(data, ("127.0.0.1", port))
        yield until(lambda: source.refused >= 3, "the garbage refused")
        sent = self.set(app, "house", (50.0, 60.0, 70.0))
        yield reading_like(app.meters["grid"], sent)
        self.assertEqual(app.meters["grid"].freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_a_taken_port_means_down_until_it_is_free(self):
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]
        self.addCleanup(blocker.close)
        app = yield self.start({"house": SIM, "grid": grid(port, serial=1901234567)},
                               [face("house", 1901234567, port)])
        meter, source = app.meters["grid"], app.sources["grid"]
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertIn("cannot listen", meter.down_reason or "")
        blocker.close()
        yield until(lambda: source.state == "listening", "listening again")
        sent = self.set(app, "house", (10.0, 20.0, 30.0))
        yield reading_like(meter, sent)
        self.assertEqual(meter.freshness(), Freshness.FRESH)
