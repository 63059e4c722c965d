"""Per-call cost of the pieces of one ``EM.GetStatus`` answer, in-process.

No sockets: a real ShellyDevice over a Meter holding one reading, and
``timeit`` on each step the UDP path takes (parse, dispatch, encode, metrics),
with the standard library's ``json.dumps`` next to the fixed-decimals encoder
for scale, and one NotifyStatus flush step for the WebSocket fan-out.
Prints one JSON object: microseconds per call.
"""

from __future__ import annotations

import json
import timeit

from twisted.internet.task import Clock

from meteremu.devices.shelly import jsonfmt
from meteremu.devices.shelly.device import ShellyDevice
from meteremu.devices.shelly.identity import make_identity
from meteremu.devices.shelly.notify import notification, status_diff
from meteremu.devices.shelly.options import Options
from meteremu.devices.shelly.rpc import CallContext, parse_frame
from meteremu.devices.shelly.udp import answer_datagram
from meteremu.exporters.prometheus import Metrics
from meteremu.meter import Meter
from meteremu.reading import PhaseReading, Reading

REQUEST = b'{"id":7,"method":"EM.GetStatus","params":{"id":0}}'


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
    known = {k: dict(v) for k, v in device.meter_components(ws_ctx).items()}
    meter.update(reading(1_700_000_001, 2170.0))
    current = device.meter_components(ws_ctx)
    diff = status_diff({k: dict(v) for k, v in known.items()}, current, 0.1)

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
        "metrics: requests.labels(...).inc()": per_call(
            lambda: metrics.requests.labels("id", "udp", "EM.GetStatus").inc()),
        "ws flush, per client: meter_components": per_call(lambda: device.meter_components(ws_ctx), 5000),
        "ws flush, per client: status_diff": per_call(
            lambda: status_diff({k: dict(v) for k, v in known.items()}, current, 0.1), 5000),
        "ws flush, per client: encode the notification": per_call(
            lambda: jsonfmt.dumpb(notification("id", "bench", "NotifyStatus", 1.7e9, diff)), 5000),
        "reply bytes": len(jsonfmt.dumpb(response)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
