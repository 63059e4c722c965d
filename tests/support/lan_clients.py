"""Clients that run in another namespace of the test LAN (``tests.support.netns``).

Run as ``python -m tests.support.lan_clients <client> …`` under ``ip netns
exec``; each prints one JSON document on stdout and exits 0, or prints why on
stderr and exits 1. The deadlines only bound a broken run (a test never
waits forever); no test asserts on time.

* ``marstek PORT POLLS``: what a Marstek battery does with a Shelly UDP
  meter: broadcast ``EM.GetStatus`` until the first answer, learn the
  meter's address from it, then poll that address unicast.
* ``mdns TYPE…``: a python-zeroconf browser that resolves every instance of
  each service type (address, port, TXT) over real multicast.
* ``ecotracker HOST PORT``: everHome's client library reads ``/v1/json``.
* ``sma ADDRESS``: pysma-plus' Energy Meter client joins 239.12.255.254 on
  the interface with this address and reads one datagram's sensors.
* ``sma_source INTERFACE SERIAL``: meteremu's ``sma_energy_meter`` source
  (on the reactor tests.support installed) joins 239.12.255.254 on INTERFACE and reads
  samples until it has three of the meter SERIAL.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any

DEADLINE = 30.0


def _frame(request_id: int) -> bytes:
    return json.dumps({"id": request_id, "method": "EM.GetStatus", "params": {"id": 0}}).encode()


def marstek(port: int, polls: int) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(("0.0.0.0", 0))
    sock.settimeout(0.5)
    end = time.monotonic() + DEADLINE
    request_id = 0
    broadcasts = 0
    meter: str | None = None
    first: Any = None
    while meter is None:
        if time.monotonic() > end:
            raise SystemExit("no answer to the broadcast")
        request_id += 1
        broadcasts += 1
        sock.sendto(_frame(request_id), ("255.255.255.255", port))
        try:
            data, (meter, _) = sock.recvfrom(65535)
        except TimeoutError:
            continue
        first = json.loads(data)
    answers = []
    while len(answers) < polls:
        if time.monotonic() > end:
            raise SystemExit(f"only {len(answers)} unicast answers")
        request_id += 1
        sock.sendto(_frame(request_id), (meter, port))
        try:
            data, (source, _) = sock.recvfrom(65535)
        except TimeoutError:
            continue
        answers.append({"from": source, "reply": json.loads(data)})
    return {"meter": meter, "broadcasts": broadcasts, "first": first, "unicast": answers}


def mdns(types: list[str]) -> dict[str, Any]:
    from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

    found: dict[str, set[str]] = {t: set() for t in types}

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            found[service_type].add(name)

    zc = Zeroconf()
    try:
        ServiceBrowser(zc, types, handlers=[on_change])
        end = time.monotonic() + DEADLINE
        while not all(found.values()):
            if time.monotonic() > end:
                raise SystemExit(f"not found: {[t for t, names in found.items() if not names]}")
            time.sleep(0.1)
        result: dict[str, Any] = {}
        for service_type, names in found.items():
            result[service_type] = []
            for name in sorted(names):
                info = zc.get_service_info(service_type, name, timeout=10000)
                if info is None:
                    raise SystemExit(f"{name} did not resolve")
                result[service_type].append({
                    "name": name, "server": info.server, "port": info.port,
                    "addresses": info.parsed_addresses(),
                    "properties": {k.decode(): (v.decode() if v is not None else None)
                                   for k, v in info.properties.items()},
                })
        return result
    finally:
        zc.close()


def ecotracker(host: str, port: int) -> dict[str, Any]:
    import asyncio

    from ecotracker import EcoTracker

    async def read() -> dict[str, Any]:
        meter = EcoTracker(host, port)
        end = time.monotonic() + DEADLINE
        while not await meter.async_update():
            if time.monotonic() > end:
                raise SystemExit("/v1/json could not be read")
            await asyncio.sleep(0.2)
        return meter.get_all_data()

    return asyncio.run(read())


def sma(address: str) -> dict[str, Any]:
    import asyncio

    from pysmaplus.device_em import SMAspeedwireEM

    async def read() -> dict[str, Any]:
        em = SMAspeedwireEM()
        em.set_options({"bindingAddr": address})
        try:
            end = time.monotonic() + DEADLINE
            while True:
                try:
                    await em.new_session()
                    break
                except Exception as e:  # nothing received yet (pysma-plus' own exceptions)
                    if time.monotonic() > end:
                        raise SystemExit(f"no Speedwire datagram: {e}") from None
            sensors = await em.get_sensors()
            await em.read(sensors)
            debug = await em.get_debug()
            return {"sensors": {s.name: s.value for s in sensors}, "serial": debug["serial"],
                    "data": debug["last_data"]}
        finally:
            await em.close_session()

    return asyncio.run(read())


def sma_source(interface: str, serial: int) -> dict[str, Any]:
    # tests.support (this module's package) has installed Twisted's default reactor already.
    from twisted.internet import reactor

    from meteremu.meter import Meter
    from meteremu.sources.sma_energy_meter.options import SmaEnergyMeterOptions
    from meteremu.sources.sma_energy_meter.source import SmaEnergyMeterSource

    clock: Any = reactor
    meter = Meter("grid", clock, stale_after=10.0, source_type="sma_energy_meter")
    source = SmaEnergyMeterSource(meter, SmaEnergyMeterOptions(serial=serial, interface=interface), clock)
    result: dict[str, Any] = {}

    def check() -> None:
        if source.samples >= 3 or time.monotonic() > end:
            latest = meter.latest
            result.update(samples=source.samples, state=source.state, freshness=str(meter.freshness()),
                          details={k: v for k, v in meter.details.items() if k != "heard"},
                          heard=sorted(int(s) for s in meter.details.get("heard", {})),
                          phases=[[p.act_power, p.voltage, p.current] for p in latest.phases] if latest else None)
            source.stopService()
            clock.stop()
        else:
            clock.callLater(0.05, check)

    end = time.monotonic() + DEADLINE
    clock.callWhenRunning(source.startService)
    clock.callWhenRunning(check)
    clock.run()
    if not result.get("samples"):
        raise SystemExit(f"no sample: {result}")
    return result


def main(argv: list[str]) -> int:
    client, args = argv[0], argv[1:]
    if client == "marstek":
        result = marstek(int(args[0]), int(args[1]))
    elif client == "mdns":
        result = mdns(args)
    elif client == "ecotracker":
        result = ecotracker(args[0], int(args[1]))
    elif client == "sma":
        result = sma(args[0])
    elif client == "sma_source":
        result = sma_source(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown client {client!r}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
