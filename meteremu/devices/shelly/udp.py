"""UDP JSON-RPC (Marstek/Hame batteries: ports 1010, 2220, 2222, 2223).

One request frame per datagram, one response datagram back to the sender's
address and port, from the same RPC core as every other transport. The
decision what to do with a datagram is pure (:func:`answer_datagram`); the
protocol class only moves bytes. Never a reply storm: garbage, oversize,
non-JSON and id-less datagrams are dropped and counted, never answered, and a
stale meter under ``on_stale: error`` gets no reply at all (the battery then
falls back to its own safe mode, as when the meter is unplugged).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.internet.protocol import DatagramProtocol

from meteremu.devices.shelly import jsonfmt
from meteremu.devices.shelly.clients import THROTTLED
from meteremu.devices.shelly.rpc import UNAVAILABLE, CallContext, RpcCore, RpcError, parse_frame
from meteremu.logs import logger

log = logger(__name__)

# Errors that mean "stay silent" on UDP rather than "answer with an error".
SILENT_ERRORS = {UNAVAILABLE: "stale", THROTTLED: "throttled"}


def answer_datagram(core: RpcCore, data: bytes, ctx: CallContext, max_bytes: int) -> tuple[bytes | None, str | None]:
    """``(reply or None, drop reason or None)`` for one datagram (pure)."""
    if len(data) > max_bytes:
        return None, "oversize"
    try:
        frame = parse_frame(data)
    except RpcError:
        return None, "garbage"
    if not isinstance(frame, dict) or "method" not in frame or frame.get("id") is None:
        return None, "garbage"
    response = core.handle_frame(frame, ctx)
    if response is None:
        return None, "garbage"
    error = response.get("error")
    if error is not None and error.get("code") in SILENT_ERRORS:
        return None, SILENT_ERRORS[error["code"]]
    return jsonfmt.dumpb(response), None


class ShellyUDP(DatagramProtocol):
    """One UDP port of one device."""

    def __init__(self, core: RpcCore, max_bytes: int, local_ip: str | None,
                 on_drop: Callable[[str], None] | None = None,
                 observe_latency: Callable[[str, float], None] | None = None) -> None:
        self.core, self.max_bytes, self.local_ip = core, max_bytes, local_ip
        self.on_drop = on_drop or (lambda reason: None)
        self.observe_latency = observe_latency or (lambda transport, seconds: None)
        self.dropped: dict[str, int] = {}
        self.answered = 0

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        started = time.perf_counter()
        try:
            reply, dropped = answer_datagram(self.core, data, CallContext("udp", addr[0], None, self.local_ip),
                                             self.max_bytes)
        except Exception:
            log.failure("answering a datagram from {addr} failed", addr=addr[0])
            reply, dropped = None, "error"
        if dropped is not None:
            self.dropped[dropped] = self.dropped.get(dropped, 0) + 1
            self.on_drop(dropped)
            return
        try:
            self.transport.write(reply, addr)
        except OSError as exc:  # e.g. EPERM/ENETUNREACH for an odd source address
            log.warn("cannot answer {addr}: {why}", addr=addr[0], why=str(exc))
            self.on_drop("send_error")
            return
        self.answered += 1
        self.observe_latency("udp", time.perf_counter() - started)
