"""meteremu with a stopwatch on its Meter, for the WebSocket fan-out benchmark.

Builds and runs the real service tree exactly as ``twistd meteremu`` does
(``meteremu.app.build`` on the asyncio reactor, same config file), and adds one
thing: a listener registered on the meter *before* the service starts, so it
runs first of all listeners, which records ``time.time()`` the moment each
Reading enters the Meter, with the reading's ``total_act_power`` rounded as
served (3 decimals; the clients match their notifications to readings by it). The WebSocket
notification hub, registered after it, then does its normal work. On SIGTERM
the ``[time, total_act_power]`` pairs are written as JSON to ``--entries``.

``python bench/probe_server.py --config FILE --entries OUT`` prints
``probe serving on HTTP port N`` once every part is up.
"""

from __future__ import annotations

import argparse
import json
import time

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import reactor  # noqa: E402

from meteremu.app import build  # noqa: E402
from meteremu.config import load_config  # noqa: E402
from meteremu.reading import Reading  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--entries", required=True)
    parser.add_argument("--meter", default="grid")
    args = parser.parse_args()
    app = build(load_config(args.config), reactor)
    entries: list[tuple[float, float]] = []

    def entered(meter: object, reading: Reading) -> None:
        now = time.time()
        total = 0.0
        for i in range(3):  # summed as status.em_status does, so it rounds the same
            total += reading.phase(i).act_power * 1.0
        entries.append((now, round(total, 3)))

    app.meters[args.meter].add_listener(entered)

    def save() -> None:
        with open(args.entries, "w", encoding="utf-8") as handle:
            json.dump(entries, handle)

    def started(_: object) -> None:
        print(f"probe serving on HTTP port {app.http_port()}", flush=True)

    app.service.privilegedStartService()
    app.service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", app.service.stopService)
    reactor.addSystemEventTrigger("after", "shutdown", save)
    reactor.callWhenRunning(lambda: app.ready().addCallback(started))
    reactor.run()


if __name__ == "__main__":
    main()
