"""Latency from an MQTT publish to the new value being served (the mqtt and tasmota sources).

One process, one asyncio reactor, loopback only: a real mosquitto (Debian's,
started on a free 127.0.0.1 port with the test suite's fixture), a real
meteremu (a meter fed by the ``mqtt`` source, or by the ``tasmota`` source in
MQTT mode with ``--source tasmota``, and a Shelly Pro 3EM with a UDP port and
HTTP), and a publisher (``meteremu.mqttclient.ReactorMQTTClient`` on the same
reactor, so no thread hand-off is measured). ``bench/push_latency.measure``
times each publish until a UDP and an HTTP client see it served. Every figure
includes the broker hop (publisher → mosquitto → meteremu), which any MQTT
input pays. The tasmota payload is a SENSOR message as an SML script publishes
it (``{"Time": …, "SML": {"Power_curr": …}}``), the value found by its name.

Unlike AstraMeter's default ``WAIT_FOR_NEXT_MESSAGE`` (a reply waits up to
2 s for the next publish), meteremu answers at once with the latest value.

Usage::

    python bench/mqtt_latency.py [--source mqtt|tasmota] [--changes 500] [--budget 60] [result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import defer, reactor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.push_latency import cli, config_for, deferLater, free_udp_port, measure  # noqa: E402
from meteremu.app import build  # noqa: E402
from meteremu.logs import set_level  # noqa: E402
from meteremu.mqttclient import BrokerSettings, Message, ReactorMQTTClient  # noqa: E402
from tests.support.mosquitto import MOSQUITTO, Mosquitto  # noqa: E402

TOPIC = "bench/grid/power"
TASMOTA = "tasmota_bench"


class _Fixture:
    """What ``tests.support.mosquitto.Mosquitto`` needs of a TestCase."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.cleanups: list[Callable[[], Any]] = []

    def mktemp(self) -> str:
        return os.path.join(self.directory, "broker")

    def addCleanup(self, function: Callable[[], Any]) -> None:
        self.cleanups.append(function)


def source_and_message(kind: str, port: int) -> tuple[dict[str, Any], Callable[[float], Message]]:
    """The meter's source config and the message that carries a new power value."""
    broker = {"host": "127.0.0.1", "port": port}
    if kind == "tasmota":
        def sensor(want: float) -> Message:
            payload = {"Time": "2026-12-05T12:00:00", "SML": {"Total_in": 1234.5678, "Power_curr": want}}
            return Message(f"tele/{TASMOTA}/SENSOR", json.dumps(payload), 0, False)

        return ({"type": "tasmota", "mode": "mqtt", "topic": TASMOTA, "broker": broker,
                 "values": {"power": "Power_curr"}}, sensor)
    return ({"type": "mqtt", **broker, "values": {"power": TOPIC}},
            lambda want: Message(TOPIC, f"{want:g}", 0, True))


@defer.inlineCallbacks
def run(args: argparse.Namespace, fixture: _Fixture) -> Any:
    set_level("warn")
    broker = Mosquitto(fixture)
    publisher: ReactorMQTTClient | None = None
    app = None
    try:
        yield broker.start()
        udp_port = yield free_udp_port()
        source, message = source_and_message(args.source, broker.port)
        app = build(config_for(source, udp_port, fixture.directory), reactor)
        app.service.startService()
        publisher = ReactorMQTTClient(BrokerSettings("127.0.0.1", broker.port, "bench-publisher"), reactor,
                                      name="bench publisher")
        publisher.start()
        while not publisher.connected:
            yield deferLater(0.005)
        meter = app.meters["grid"]
        while meter.latest is None:  # the source subscribes when it likes: publish until it hears
            publisher.publish(message(0.0))
            yield deferLater(0.05)
        result = yield measure(app, udp_port, lambda want: publisher.publish(message(want)), args.changes,
                               f"{args.source}_latency", f"the {args.source} MQTT publish (through mosquitto)")
        result["broker"] = MOSQUITTO
        return result
    finally:
        if publisher is not None:
            yield publisher.stop()
        if app is not None:
            yield app.service.stopService()
        yield broker.stop()


def main() -> int:
    if MOSQUITTO is None:
        sys.stderr.write("mosquitto is not installed (Debian: apt-get install mosquitto)\n")
        return 1
    fixture = _Fixture(tempfile.mkdtemp(prefix="mqtt_latency_"))
    try:
        return cli(__doc__ or "", lambda args: run(args, fixture),
                   lambda p: p.add_argument("--source", choices=("mqtt", "tasmota"), default="mqtt"))
    finally:  # also after an aborted run: the broker never outlives the benchmark
        for cleanup in fixture.cleanups:
            cleanup()
        shutil.rmtree(fixture.directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
