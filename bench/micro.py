"""Per-call cost of the pieces of one ``EM.GetStatus`` answer, in-process.

No sockets: a real ShellyDevice over a Meter holding one reading, and
``timeit`` on each step the UDP path takes (parse, dispatch, encode, metrics),
with the standard library's ``json.dumps`` next to the fixed-decimals encoder
for scale, and the steps of a NotifyStatus flush for the WebSocket fan-out (and one whole flush to
200 clients that discard what they get).
Prints one JSON object: microseconds per call.
"""

from __future__ import annotations

import json
import timeit

from twisted.internet.task import Clock

from meteremu.devices.shelly import jsonfmt
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.hub import NotifyHub
from meteremu.devices.shelly.identity import make_identity
from meteremu.devices.shelly.notify import diff_status, notification_bytes, params_json
from meteremu.devices.shelly.options import Options
from meteremu.devices.shelly.rpc import CallContext, parse_frame
from meteremu.devices.shelly.udp import answer_datagram
from meteremu.exporters.prometheus import Metrics
from meteremu.meter import Meter
from meteremu.reading import PhaseReading, Reading

REQUEST = b'{"id":7,"method":"EM.GetStatus","params":{"id":0}}'


class Subscriber:
    """A NotifyHub client that keeps nothing: measures the hub, not a socket."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.ctx = CallContext("ws", "127.0.0.9", src, "127.0.0.1")
        self.known: dict = {}
        self.last_notified = float("-inf")

    def send(self, payload: bytes) -> None:
        pass


def reading(t: float, watts: float) -> Reading:
    return Reading(phases=(PhaseReading.from_power(watts, 227.0, 0.99, 49.9),
                           PhaseReading.from_power(3.6, 230.0, 0.36, 49.9),
                           PhaseReading.from_power(-244.0, 230.2, 0.72, 49.9)), measured_at=t)


def main() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    options = Options(meter="grid")
    meter = Meter("grid", clock, stale_after=10.0, source_type="bench")
    device = ShellyDevice(options, make_identity(options, "AABBCCDDEEFF"), meter, clock,
                          temperature=lambda: 46.3)
    meter.update(reading(1_700_000_000, 2166.2))
    core = device.core
    ctx = CallContext("udp", "127.0.0.5", None, "127.0.0.1")
    frame = parse_frame(REQUEST)
    response = core.handle_frame(frame, ctx)
    metrics = Metrics(lambda: [meter])
    ws_ctx = CallContext("ws", "127.0.0.5", "bench", "127.0.0.1")
    known = device.meter_components(ws_ctx)
    meter.update(reading(1_700_000_001, 2170.0))
    current = device.meter_components(ws_ctx)
    diff, _ = diff_status(known, current, 0.1)
    hub = NotifyHub(device, clock, 0.05, 0.1)
    subscribers = [Subscriber(f"bench-{i}") for i in range(200)]
    for subscriber in subscribers:
        hub.subscribe(subscriber)
    watts = [2170.0]

    def flush_200() -> None:
        watts[0] += 5.0
        clock.advance(0.1)
        meter.update(reading(clock.seconds(), watts[0]))
        hub.flush()

    def per_call(fn: object, n: int = 20000) -> float:
        return round(timeit.timeit(fn, number=n) / n * 1e6, 2)  # type: ignore[arg-type]

    out = {
        "udp: answer_datagram (parse + dispatch + encode)": per_call(
            lambda: answer_datagram(core, REQUEST, ctx, 2048)),
        "  parse_frame": per_call(lambda: parse_frame(REQUEST)),
        "  RpcCore.handle_frame (EM.GetStatus)": per_call(lambda: core.handle_frame(frame, ctx)),
        "  jsonfmt.dumpb (the reply)": per_call(lambda: jsonfmt.dumpb(response)),
        "  for scale: json.dumps of the same reply": per_call(
            lambda: json.dumps(response, separators=(",", ":")).encode()),
        "metrics: observe_latency": per_call(lambda: metrics.observe_latency("udp", 0.0001)),
        "metrics: requests.inc(...)": per_call(lambda: metrics.requests.inc("id", "udp", "EM.GetStatus")),
        "ws: meter_components (once per flush and scale)": per_call(lambda: device.meter_components(ws_ctx), 5000),
        "ws: diff_status (once per flush and state)": per_call(lambda: diff_status(known, current, 0.1), 5000),
        "ws: params_json (once per flush and state)": per_call(lambda: params_json(1.7e9, diff), 5000),
        "ws: notification_bytes (per client)": per_call(
            lambda: notification_bytes("id", "bench", "NotifyStatus", '{"ts":1.0}'), 5000),
        "ws: NotifyHub.flush to 200 clients, one scale (no sockets)": per_call(flush_200, 200),
        "reply bytes": len(jsonfmt.dumpb(response)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
