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

import re
import time
from collections.abc import Callable
from typing import cast

from twisted.internet.protocol import DatagramProtocol

from meteremu.compat.udp import SendTo, raw_sendto
from meteremu.devices.shelly import jsonfmt
from meteremu.devices.shelly.clients import THROTTLED
from meteremu.devices.shelly.rpc import UNAVAILABLE, CallContext, RpcCore, RpcError, parse_frame
from meteremu.interfaces import IReactorTime
from meteremu.logs import logger
from meteremu.ratelog import RateLimitedLog

log = logger(__name__)

# Errors that mean "stay silent" on UDP rather than "answer with an error".
SILENT_ERRORS = {UNAVAILABLE: "stale", THROTTLED: "throttled"}


# The one request batteries send, several times a second each, in the compact
# form they all use: recognised without a JSON parse (see fast_poll). The id
# is a JSON integer without leading zeros, so echoing its digits is exactly
# what encoding the parsed int gives.
POLL = re.compile(rb'\{"id":(0|[1-9][0-9]{0,15}),"method":"(EM1?\.GetStatus)","params":\{"id":([0-9])\}\}\Z')


def fast_poll(core: RpcCore, data: bytes, ctx: CallContext) -> tuple[bytes | None, str | None] | None:
    """:func:`answer_datagram` for a canonical ``EM(1).GetStatus`` poll; None for anything else.

    Same answer, byte for byte, as the general path (tests hold the two side
    by side); it only skips the JSON parse, the frame checks and the envelope
    encoding, which are most of the cost of an answer whose result is cached.
    """
    match = POLL.match(data)
    if match is None:
        return None
    number, method, component = match.groups()
    try:
        result = core.call(method.decode("ascii"), {"id": int(component)}, ctx)
    except RpcError as err:
        core.report_error(err.code, ctx)
        if err.code in SILENT_ERRORS:
            return None, SILENT_ERRORS[err.code]
        return jsonfmt.dumpb({"id": int(number), "src": core.id_for(ctx), "error": err.as_dict()}), None
    raw = result.raw if type(result) is jsonfmt.Encoded else jsonfmt.dumpb(result)
    return b'{"id":%s,"src":%s,"result":%s}' % (number, core.id_json_for(ctx), raw), None


def answer_datagram(core: RpcCore, data: bytes, ctx: CallContext, max_bytes: int) -> tuple[bytes | None, str | None]:
    """``(reply or None, drop reason or None)`` for one datagram (pure)."""
    if len(data) > max_bytes:
        return None, "oversize"
    answer = fast_poll(core, data, ctx)
    return answer if answer is not None else general_answer(core, data, ctx)


def general_answer(core: RpcCore, data: bytes, ctx: CallContext) -> tuple[bytes | None, str | None]:
    """:func:`answer_datagram` for any datagram within the size limit, by the RPC core."""
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


MAX_CONTEXTS = 1024  # peers whose CallContext is kept (a house has a few batteries)
LARGE_ANSWER = 1024  # bytes: EM(1).GetStatus, what batteries poll, stays well below
LARGE_PER_SECOND = 1.0  # large answers per source and second, on average...
LARGE_BURST = 3.0  # ...with this many at once (Home Assistant's setup asks a few)


class AnswerBudget:
    """How many large answers each source may get: UDP's source address is not proven.

    A 36-byte ``Shelly.GetStatus`` gets a 1,385-byte answer: sent to a forged
    source, a 38x amplifier. Small answers (the polls batteries send) are
    never limited; large ones are, per source, by a token bucket. Pure (the
    time is passed in); bounded (the table is cleared past MAX_CONTEXTS sources).
    """

    def __init__(self, per_second: float = LARGE_PER_SECOND, burst: float = LARGE_BURST) -> None:
        self.per_second, self.burst = per_second, burst
        self._tokens: dict[str, tuple[float, float]] = {}  # ip -> (tokens, at)

    def allow(self, ip: str, size: int, now: float) -> bool:
        if size <= LARGE_ANSWER:
            return True
        tokens, at = self._tokens.get(ip, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_second)
        if tokens < 1.0:
            self._tokens[ip] = (tokens, now)
            return False
        if ip not in self._tokens and len(self._tokens) >= MAX_CONTEXTS:
            self._tokens.clear()
        self._tokens[ip] = (tokens - 1.0, now)
        return True


class ShellyUDP(DatagramProtocol):
    """One UDP port of one device.

    The per-datagram path is kept short (batteries poll up to 10 times a
    second each): the caller's CallContext is reused per address, and the
    reply goes straight to the socket (:func:`meteremu.compat.udp.raw_sendto`)
    because the address came from ``recvfrom`` and needs none of the hostname
    checks ``Port.write`` does for arbitrary callers.
    """

    def __init__(self, core: RpcCore, max_bytes: int, local_ip: str | None,
                 on_drop: Callable[[str], None] | None = None,
                 observe_latency: Callable[[str, float], None] | None = None,
                 clock: IReactorTime | None = None) -> None:
        self.core, self.max_bytes, self.local_ip = core, max_bytes, local_ip
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.clock: IReactorTime = clock
        self.budget = AnswerBudget()
        self.warnings = RateLimitedLog(log, self.clock)
        self.on_drop = on_drop or (lambda reason: None)
        self.observe_latency = observe_latency or (lambda transport, seconds: None)
        self.dropped: dict[str, int] = {}
        self.answered = 0
        self._contexts: dict[str, CallContext] = {}
        self._sendto: SendTo | None = None

    def startProtocol(self) -> None:
        self._sendto = raw_sendto(self.transport)

    def stopProtocol(self) -> None:
        self._sendto = None

    def _context(self, ip: str) -> CallContext:
        ctx = self._contexts.get(ip)
        if ctx is None:
            if len(self._contexts) >= MAX_CONTEXTS:
                self._contexts.clear()
            ctx = self._contexts[ip] = CallContext("udp", ip, None, self.local_ip)
        return ctx

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        started = time.perf_counter()
        try:
            reply, dropped = answer_datagram(self.core, data, self._context(addr[0]), self.max_bytes)
        except Exception:
            if self.dropped.get("error", 0) == 0:  # a bug: its first traceback is enough
                log.failure("answering a datagram from {addr} failed", addr=addr[0])
            reply, dropped = None, "error"
        if reply is not None and not self.budget.allow(addr[0], len(reply), self.clock.seconds()):
            reply, dropped = None, "rate_limited"
        if dropped is not None:
            self.dropped[dropped] = self.dropped.get(dropped, 0) + 1
            self.on_drop(dropped)
            return
        assert reply is not None and self.transport is not None
        try:
            if self._sendto is not None:
                self._sendto(reply, addr)
            else:
                self.transport.write(reply, addr)
        except OSError as exc:  # EPERM/ENETUNREACH for an odd source, EAGAIN when the buffer is full
            self.warnings.warn("send", "cannot answer {addr}: {why}", addr=addr[0], why=str(exc))
            self.on_drop("send_error")
            return
        self.answered += 1
        self.observe_latency("udp", time.perf_counter() - started)
