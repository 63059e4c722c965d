"""Shared hypothesis strategies, response checks and case counting for the fuzz tests.

Everything here is deterministic: :func:`fuzz_settings` derandomizes
hypothesis and turns its example database off, so a CI run draws the same
cases every time. ``METEREMU_FUZZ_SCALE`` (a float, default 1) multiplies the
number of examples for a longer local or nightly run, ``METEREMU_FUZZ_SHRINK=1``
turns hypothesis' shrinking on (off by default to keep a failing run short), and
``METEREMU_FUZZ_REPORT`` names a file to which each target appends its line
``fuzz: <target>: <N> cases`` (the same line goes to the Twisted log).
"""

from __future__ import annotations

import json
import math
import os
import re
import string
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote_from_bytes

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="meteremu.tests.fuzz")

SCALE = float(os.environ.get("METEREMU_FUZZ_SCALE", "1") or 1)
REPORT = os.environ.get("METEREMU_FUZZ_REPORT")
SHRINK = os.environ.get("METEREMU_FUZZ_SHRINK", "") not in ("", "0")

# Every error code the device may put in a frame (rpc.py, clients.py).
KNOWN_ERROR_CODES = frozenset({-103, -105, -108, -114, 401, 404, -32700})

#: target -> cases run in this process (the lead quotes these in the docs)
CASES: dict[str, int] = {}


def short(value: Any, limit: int = 300) -> str:
    """``repr`` cut to ``limit``; safe for ints beyond the 4300-digit str() limit."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} too large to repr>"
    return text if len(text) <= limit else text[:limit] + "..."


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


def fuzz_settings(n: int, **kw: Any) -> settings:
    """Bounded, deterministic hypothesis settings for ``n`` examples.

    No shrinking unless ``METEREMU_FUZZ_SHRINK=1``: a failure reports the
    first failing case at once (shrinking several distinct bugs can take
    minutes); set it to get minimal examples while fixing.
    """
    phases = [Phase.explicit, Phase.generate]
    if SHRINK:
        phases.append(Phase.shrink)
    return settings(max_examples=examples(n), deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=False, phases=phases, **kw)


def start_clock(case: Any) -> None:
    """Call in setUp: :func:`record` then logs how long the target took."""
    case.fuzz_started = time.perf_counter()


def record(case: Any, target: str, count: int, minimum: int) -> None:
    """Log ``fuzz: <target>: <N> cases`` and check that at least ``minimum`` ran."""
    CASES[target] = CASES.get(target, 0) + count
    started = getattr(case, "fuzz_started", None)
    took = f" ({time.perf_counter() - started:.1f} s)" if started is not None else ""
    line = f"fuzz: {target}: {count} cases{took}"
    log.info("{line}", line=line)
    if REPORT:
        with open(REPORT, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    case.assertGreaterEqual(count, min(minimum, examples(minimum)),
                            f"fuzz: {target}: only {count} cases ran, expected at least {minimum}")


def corpus(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """``n`` (or fewer, if the space is small) deterministic draws of ``strategy``.

    For the live tests: hypothesis runs synchronously here, and the async test
    replays the list over real sockets.
    """
    out: list[Any] = []

    @settings(max_examples=examples(n), deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    return out


# --------------------------------------------------------------------------
# JSON of any shape

# Numbers that break naive code: beyond int64/float, the 4300-digit int limit
# of str()/int(), floats that overflow to inf, negative zero.
HUGE_INTS = (2**31, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**308, 10**309, 10**4299, -(10**4299))
HUGE_NUMBER_TEXTS = ("1e999", "-1e999", "1e-999", "-0.0", "1" * 4300, "1" * 4301, "NaN", "Infinity",
                     "-Infinity", "123456789012345678901234567890.5", "0." + "0" * 400 + "1")



def lazy_choice(values: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """``sampled_from`` without the values in the strategy's repr (some are kilobytes long)."""
    return st.sampled_from(range(len(values))).map(values.__getitem__)


lone_surrogates = st.characters(categories=["Cs"])
any_text = st.text(max_size=12) | st.text(st.characters(codec=None), max_size=6) | st.builds(
    lambda a, s, b: a + s + b, st.text(max_size=3), st.text(lone_surrogates, min_size=1, max_size=2),
    st.text(max_size=3))

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    lazy_choice(HUGE_INTS), st.floats(allow_nan=True, allow_infinity=True), any_text,
)


def json_values(keys: st.SearchStrategy[str] | None = None, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON document (plus nan/inf and lone surrogates, which Python's json accepts)."""
    key_strategy = any_text if keys is None else (keys | any_text)
    return st.recursive(
        json_scalars,
        lambda children: st.lists(children, max_size=5) | st.dictionaries(key_strategy, children, max_size=5),
        max_leaves=max_leaves,
    )


def _random_case(name: str, flips: list[bool]) -> str:
    return "".join(c.swapcase() if flips[i % len(flips)] else c for i, c in enumerate(name)) if flips else name


def method_names(known: Iterable[str]) -> st.SearchStrategy[Any]:
    known = sorted(known)
    return st.one_of(
        st.sampled_from(known),
        st.builds(_random_case, st.sampled_from(known), st.lists(st.booleans(), min_size=1, max_size=8)),
        any_text, json_scalars,
    )


PARAM_KEYS = st.sampled_from(["id", "offset", "include", "keys", "dynamic_only", "phase", "ts"])


def frame_dicts(methods: Iterable[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Request-frame-shaped dicts: each member optional, each of any type."""
    values = json_values(PARAM_KEYS)
    ids = st.one_of(st.integers(min_value=0, max_value=2**31), lazy_choice(HUGE_INTS), any_text, values)
    srcs = st.one_of(st.sampled_from(["ha-1", "b2500", "x" * 300]), any_text, values)
    params = st.one_of(
        st.fixed_dictionaries({}, optional={"id": st.one_of(st.integers(-2, 4), values),
                                            "offset": st.one_of(st.integers(-2, 40), values),
                                            "include": st.one_of(st.lists(st.sampled_from(["status", "config"])),
                                                                 values),
                                            "keys": st.one_of(st.lists(st.sampled_from(
                                                ["em:0", "emdata:0", "sys", "x"])), values),
                                            "dynamic_only": values}),
        values,
    )
    return st.fixed_dictionaries({}, optional={
        "id": ids, "method": method_names(methods), "src": srcs, "params": params,
        "dst": any_text, "jsonrpc": st.just("2.0"),
    })


def encode_json(value: Any, ascii_only: bool) -> bytes:
    """JSON text of ``value``; non-ASCII mode writes lone surrogates as raw (invalid UTF-8) bytes."""
    text = json.dumps(value, allow_nan=True, ensure_ascii=ascii_only)
    return text.encode("utf-8", errors="surrogatepass")


def _splice(data: bytes, at: int, insert: bytes, cut: int) -> bytes:
    at = at % (len(data) + 1)
    return data[:at] + insert + data[at + cut:]


def frame_bytes(methods: Iterable[str]) -> st.SearchStrategy[bytes]:
    """Encoded frames: clean, with raw number texts, and mutated (spliced bytes)."""
    frames = frame_dicts(methods)
    clean = st.builds(encode_json, frames, st.booleans())
    raw_number = st.builds(
        lambda method, text, where: (
            b'{"id":%s,"method":"%s","params":{"id":0}}' % (text.encode(), method.encode()) if where == "id"
            else b'{"id":1,"method":"%s","params":{"id":%s,"offset":%s}}' % (method.encode(), text.encode(),
                                                                             text.encode())),
        st.sampled_from(sorted(methods)), lazy_choice(HUGE_NUMBER_TEXTS), st.sampled_from(["id", "params"]))
    mutated = st.builds(_splice, clean, st.integers(min_value=0), st.binary(max_size=4), st.integers(0, 3))
    return st.one_of(clean, raw_number, mutated)


def nesting(n: int, kind: str) -> bytes:
    """Deep nesting of ``kind`` (``[``, ``{"a":``, mixed), closed or not."""
    if kind == "list":
        return b"[" * n + b"]" * n
    if kind == "list-open":
        return b"[" * n
    if kind == "dict":
        return b'{"a":' * n + b"1" + b"}" * n
    if kind == "frame":  # a valid frame whose params nest deeply
        return b'{"id":1,"method":"EM.GetStatus","params":' + b'{"id":' * n + b"0" + b"}" * n + b"}"
    return b'[{"a":' * (n // 2) + b"0" + b"}]" * (n // 2)


NESTING_SIZES = (31, 32, 33, 34, 100, 1000, 5000, 20_000, 100_000)
NESTING_KINDS = ("list", "list-open", "dict", "frame", "mixed")


def deep_nesting(sizes: tuple[int, ...] = NESTING_SIZES) -> st.SearchStrategy[bytes]:
    return st.builds(nesting, st.sampled_from(sizes), st.sampled_from(NESTING_KINDS))


# --------------------------------------------------------------------------
# checks


def strict_json(raw: bytes) -> Any:
    """Decode strictly: UTF-8, and no NaN/Infinity (the batteries' parsers reject them)."""
    def reject(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(raw.decode("utf-8"), parse_constant=reject)


def echoable_id(value: Any) -> bool:
    """An id the device must echo unchanged: a string, an int or a finite float."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return True
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def check_rpc_answer(case: Any, out: bytes | None, sent: bytes | None, device_id: str,
                     frame: Any = None) -> Any:
    """The RPC property: ``None`` (only for an id-less frame) or one well-formed response.

    ``frame`` is what the request decodes to when the caller knows it (None
    when it is garbage). Returns the decoded response.
    """
    if out is None:
        case.assertIsInstance(frame, dict, f"no answer to a non-notification: {sent[:200]!r}")
        case.assertIsNone(frame.get("id"), f"no answer to a frame with an id: {sent[:200]!r}")
        return None
    case.assertIsInstance(out, bytes)
    try:
        response = strict_json(out)
    except ValueError as exc:
        case.fail(f"answer is not strict UTF-8 JSON ({exc}): {out[:300]!r} for {sent[:200]!r}")
    case.assertIsInstance(response, dict, out[:300])
    case.assertEqual(("result" in response) + ("error" in response), 1,
                     f"expected exactly one of result/error: {out[:300]!r}")
    case.assertEqual(response.get("src"), device_id, out[:300])
    if "error" in response:
        error = response["error"]
        case.assertIsInstance(error, dict, out[:300])
        code = error.get("code")
        case.assertTrue(isinstance(code, int) and not isinstance(code, bool), f"error code not an int: {out[:300]!r}")
        case.assertIn(code, KNOWN_ERROR_CODES, f"unexpected error code: {out[:300]!r}")
        case.assertIsInstance(error.get("message"), str, out[:300])
    if isinstance(frame, dict) and echoable_id(frame.get("id")) and response.get("id") is not None:
        sent_id = frame["id"]
        case.assertEqual(response["id"], sent_id, f"id not echoed: {out[:300]!r}")
        case.assertIs(type(response["id"]), type(sent_id), f"id type not kept: {out[:300]!r}")
    src = frame.get("src") if isinstance(frame, dict) else None
    if isinstance(src, str) and src and "error" not in response:
        case.assertEqual(response.get("dst"), src, f"dst not echoed: {out[:300]!r}")
    return response


def decode_or_none(data: bytes) -> Any:
    """What a frame decodes to (our own oracle), or None for garbage."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


# --------------------------------------------------------------------------
# HTTP requests

HTTP_METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH", b"get",
                                b"BREW"])
_SAFE = string.ascii_letters + string.digits + "-._~"


def _quoted(text: str, raw: bool) -> bytes:
    data = text.encode("utf-8", errors="surrogatepass")
    return quote_from_bytes(data, safe=b"" if not raw else b"/:@!$'()*+,;=[]{}\"").encode("ascii")


def query_strings(methods: Iterable[str]) -> st.SearchStrategy[bytes]:
    """Query strings: JSON values as values, odd keys, raw %xx garbage, lone keys."""
    value_text = st.one_of(
        st.builds(lambda v: json.dumps(v, allow_nan=True), json_values(PARAM_KEYS, max_leaves=6)),
        any_text, lazy_choice(HUGE_NUMBER_TEXTS), st.sampled_from([s for s in sorted(methods)]),
        st.builds(lambda n: "[" * n, st.integers(0, 5000)),
    )
    pair = st.builds(
        lambda k, v, raw, lone: _quoted(k, raw) if lone else _quoted(k, raw) + b"=" + _quoted(v, raw),
        PARAM_KEYS | st.just("method") | any_text, value_text, st.booleans(), st.booleans())
    joined = st.builds(lambda pairs, sep: sep.join(pairs), st.lists(pair, max_size=6), st.sampled_from([b"&", b";"]))
    garbage = st.binary(max_size=40).map(lambda b: quote_from_bytes(b).encode() if b else b"")
    percent = st.lists(st.sampled_from([b"%", b"%f", b"%ff", b"%ed%a0%80", b"%00", b"=", b"&", b"+", b"a"]),
                       max_size=12).map(b"".join)
    return st.one_of(joined, garbage, percent)


def http_paths(methods: Iterable[str]) -> st.SearchStrategy[bytes]:
    known = sorted(methods)
    method_segment = st.one_of(
        st.sampled_from(known).map(str.encode),
        st.builds(_random_case, st.sampled_from(known), st.lists(st.booleans(), min_size=1, max_size=8)).map(
            str.encode),
        any_text.map(lambda t: _quoted(t, False)),
        st.sampled_from([b"", b"%ff", b"%ed%a0%80", b"..", b"EM.GetStatus/x", b"%2F"]),
        st.integers(1000, 3000).map(lambda n: b"a" * n),
    )
    return st.one_of(
        st.sampled_from([b"/rpc", b"/rpc/", b"/shelly", b"/healthz", b"/metrics", b"/admin/overview", b"/",
                         b"//rpc", b"/rpc?", b"/RPC", b"*", b"http://x/rpc", b"/%00", b"/shelly/..%2f"]),
        method_segment.map(lambda m: b"/rpc/" + m),
    )


def http_bodies(methods: Iterable[str]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.just(b""), frame_bytes(methods), st.binary(max_size=64),
                     st.builds(encode_json, json_values(PARAM_KEYS), st.booleans()),
                     deep_nesting(sizes=(33, 2000)))


def http_requests(methods: Iterable[str]) -> st.SearchStrategy[bytes]:
    """Whole HTTP/1.1 requests with a correct Content-Length and ``Connection: close``."""
    headers = st.lists(st.sampled_from([
        b"Content-Type: application/json", b"Content-Type: text/plain", b"User-Agent: Mozilla/5.0",
        b"User-Agent: \xff\xfe", b"Host: \xff", b"Accept: */*", b"X-Odd: \x01",
        b"Upgrade: websocket", b"Upgrade: h2c", b"Origin: http://evil", b"Origin: http://ui.local",
        b"Origin: \xff\x00", b"Expect: 100-continue",
    ]), max_size=4, unique=True)
    return st.builds(
        lambda method, path, query, body, extra, version: (
            method + b" " + path + (b"?" + query if query else b"") + b" " + version + b"\r\n"
            + b"Host: 127.0.0.1\r\n" + b"".join(h + b"\r\n" for h in extra)
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body),
        HTTP_METHODS, http_paths(methods), query_strings(methods), http_bodies(methods), headers,
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    )


_SPECIAL_REQUESTS: list[Callable[[], bytes]] = [
    lambda: b"POST /rpc HTTP/1.1\r\nContent-Length: -1\r\n\r\n{}",
    lambda: b"POST /rpc HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
    lambda: b"POST /rpc HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    lambda: b"POST /rpc HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    lambda: b"POST /rpc HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    lambda: b"GET /rpc/EM.GetStatus?id=0 HTTP/1.1\r\n" + b"X: " + b"a" * 20_000 + b"\r\n\r\n",
    lambda: b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
    lambda: b"GET /rpc/EM.GetStatus?id=0 HTTP/1.1\r\n" + b"X-H: 1\r\n" * 600 + b"\r\n",
    lambda: b"GET /rpc/EM.GetStatus?id=0 HTTP/1.1\r\nHost: x\r\n\r\n" * 5,
    lambda: b"GET /rpc/EM.GetStatus?id=0 HTTP/1.1\nHost: x\n\n",
    lambda: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
    lambda: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
]

raw_http_garbage = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda a, b: a + b, st.sampled_from([b"GET ", b"POST /rpc HTTP/1.1\r\n", b"GET /rpc HTTP/1.1\r\n",
                                                   b"\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"]),
              st.binary(max_size=120)),
    st.sampled_from(range(len(_SPECIAL_REQUESTS))).map(lambda i: _SPECIAL_REQUESTS[i]()),
)

STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})")


def http_statuses(raw: bytes) -> list[int]:
    return [int(m.group(1)) for m in STATUS_LINE.finditer(raw)]


def split_http_response(raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """(status, lower-cased headers, de-chunked body) of the first response in ``raw``."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2:]
        return status, headers, body
    if b"content-length" in headers:
        return status, headers, rest[:int(headers[b"content-length"])]
    return status, headers, rest


# --------------------------------------------------------------------------
# Modbus TCP


def mbap(tid: int, unit: int, pdu: bytes, protocol_id: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">HHHB", tid, protocol_id, len(pdu) + 1 if length is None else length, unit) + pdu


modbus_pdus = st.one_of(
    st.builds(lambda fc, a, c: bytes([fc]) + a.to_bytes(2, "big") + c.to_bytes(2, "big"),
              st.sampled_from([3, 4, 4, 4, 1, 2, 5, 6, 16, 0x2B, 0, 0x84, 0xFF]), st.integers(0, 0xFFFF),
              st.integers(0, 0xFFFF) | st.integers(0, 130)),
    st.builds(lambda a, c: b"\x04" + a.to_bytes(2, "big") + c.to_bytes(2, "big"),
              st.sampled_from([0, 5, 47, 48, 999, 1000, 1079, 1080, 1159, 1160, 1229, 1230, 2000, 2059, 2300, 2359]),
              st.integers(0, 126)),
    st.binary(min_size=1, max_size=253),
)

modbus_frames = st.builds(lambda tid, unit, pdu: mbap(tid, unit, pdu), st.integers(0, 0xFFFF),
                          st.sampled_from([1, 1, 1, 0, 2, 247, 255]), modbus_pdus)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at ``cuts`` (positions modulo its length), as TCP may deliver it."""
    if not data:
        return [data]
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


# --------------------------------------------------------------------------
# config

def yaml_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), lazy_choice(HUGE_INTS + (10**400,)),
        st.floats(allow_nan=True, allow_infinity=True), any_text,
        st.sampled_from(["2s", "500ms", "1h30m", "10m", "0", "-1s", "1e400", "9" * 400, "auto", "error", "hold",
                         "${HOME}", "${UNSET_VAR}", "${UNSET_VAR:-7}", "${NUM}", "${EMPTY}", "${EMPTY:-x}",
                         "12:00", "001122334455", "AABBCCDDEEFF", "0.0.0.0", "127.0.0.1", "::1", "triphase",
                         "monophase", "divide", "weights", "none", "minimal", "simulator", "shelly_pro_3em"]),
        st.integers(-1, 70000),
    )


def yaml_values(keys: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Any]:
    key_strategy = any_text if keys is None else keys | any_text | json_scalars
    return st.recursive(
        yaml_scalars(),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(key_strategy, children, max_size=4),
        max_leaves=12,
    )


def dataclass_dicts(cls: type, extra: dict[str, st.SearchStrategy[Any]] | None = None
                    ) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings with a few of ``cls``' field names (and the odd unknown key) set to anything."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(cls) if f.init]
    values = yaml_values(st.sampled_from(names))
    special = st.one_of(*[st.tuples(st.just(name), strategy) for name, strategy in (extra or {}).items()]) \
        if extra else st.nothing()
    pair = st.tuples(st.sampled_from(names), values) | special
    typo = st.tuples(st.sampled_from([n[:-1] for n in names if len(n) > 2] + ["x"]), values)
    rarely_typo = st.sampled_from([0, 0, 0, 1]).flatmap(lambda n: st.lists(typo, min_size=n, max_size=n))
    return st.builds(lambda pairs, odd: dict(pairs + odd), st.lists(pair, max_size=4), rarely_typo)


# --------------------------------------------------------------------------
# live clients (a real meteremu on 127.0.0.1; every wait bounded)

WAIT = 5.0  # bound for one round trip on 127.0.0.1


class UdpClient(DatagramProtocol):
    """Sends datagrams; ``ask`` waits for the reply with a given id."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.probes: list[str] = []
        self._waiting: dict[str, Deferred[Any]] = {}
        self._ids = 0

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)
        frame = decode_or_none(data)
        if isinstance(frame, dict) and isinstance(frame.get("id"), str) and frame["id"] in self._waiting:
            self._waiting.pop(frame["id"]).callback(frame)

    def send(self, data: bytes, port: int) -> None:
        self.transport.write(data, ("127.0.0.1", port))

    def probe(self, port: int, method: str = "EM.GetStatus") -> Deferred[Any]:
        self._ids += 1
        frame_id = f"probe-{self._ids}"
        self.probes.append(frame_id)
        d: Deferred[Any] = Deferred(lambda d: self._waiting.pop(frame_id, None))
        self._waiting[frame_id] = d
        self.send(json.dumps({"id": frame_id, "method": method, "params": {"id": 0}}).encode(), port)
        return d.addTimeout(WAIT, reactor)


class RawTCP(Protocol):
    """Writes bytes, optionally half-closes, and collects what comes back until the close."""

    def __init__(self, data: bytes, half_close: bool, until: int | None = None) -> None:
        self.data, self.half_close, self.until = data, half_close, until
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)
        if self.half_close:
            self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.until is not None and len(self.received) >= self.until:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:
        self.done.callback(self.received)


def raw_exchange(port: int, data: bytes, half_close: bool, until: int | None = None) -> Deferred[bytes]:
    """Send ``data`` on a new connection; fires with the answer once the connection is closed.

    The server closes it (``Connection: close``, garbage, or our half-close),
    or we do once ``until`` bytes have arrived.
    """
    proto = RawTCP(data, half_close, until)
    factory = ClientFactory.forProtocol(lambda: proto)
    connected: list[Any] = []
    factory.startedConnecting = connected.append  # type: ignore[method-assign]
    factory.clientConnectionFailed = lambda c, reason: proto.done.errback(reason)  # type: ignore[method-assign]
    reactor.connectTCP("127.0.0.1", port, factory, timeout=WAIT)

    def timed_out(failure: Failure) -> Failure:
        if proto.transport is not None:
            proto.transport.abortConnection()
        return failure

    return proto.done.addTimeout(WAIT, reactor).addErrback(timed_out)


class WsClient(WebSocketClientProtocol):
    """Collects frames; ``reply`` waits for the answer with a given id; ``lost`` fires at TCP close."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Any] = []
        self.bad: list[bytes] = []
        self.close_info: tuple[bool, int | None, str | None] | None = None
        self.lost: Deferred[None] = Deferred()
        self._waiting: dict[str, Deferred[Any]] = {}
        self._ids = 0

    def onOpen(self) -> None:
        opened, self.factory.opened = self.factory.opened, None
        if opened is not None:
            opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = decode_or_none(payload)
        if not isinstance(frame, dict):
            self.bad.append(payload)
            return
        self.frames.append(frame)
        waiter = self._waiting.pop(frame.get("id"), None) if isinstance(frame.get("id"), str) else None
        if waiter is not None:
            waiter.callback(frame)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_info = (wasClean, code, reason)
        opened, self.factory.opened = self.factory.opened, None
        if opened is not None:
            opened.errback(ConnectionError(f"WebSocket not opened: {code} {reason}"))

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)
        finally:
            if not self.lost.called:
                self.lost.callback(None)

    def probe(self, method: str = "EM.GetStatus", src: str | None = None) -> Deferred[Any]:
        self._ids += 1
        frame_id = f"probe-{self._ids}"
        d: Deferred[Any] = Deferred(lambda d: self._waiting.pop(frame_id, None))
        self._waiting[frame_id] = d
        frame: dict[str, Any] = {"id": frame_id, "method": method, "params": {"id": 0}}
        if src:
            frame["src"] = src
        self.sendMessage(json.dumps(frame).encode())
        return d.addTimeout(WAIT, reactor)

    def close(self) -> Deferred[None]:
        """Close cleanly (abort if that takes too long); fires when the TCP connection is gone."""
        if not self.lost.called:
            self.sendClose(1000)

            def abort() -> None:
                if not self.lost.called and self.transport is not None:
                    self.transport.abortConnection()

            call = reactor.callLater(WAIT, abort)
            self.lost.addBoth(lambda r: call.cancel() if call.active() else None)
        return self.lost


def ws_connect(port: int, protocol: type[WsClient] = WsClient) -> Deferred[WsClient]:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/rpc")
    factory.protocol = protocol
    factory.opened = Deferred()
    opened = factory.opened
    connector = reactor.connectTCP("127.0.0.1", port, factory, timeout=WAIT)

    def failed(failure: Failure) -> Failure:
        connector.disconnect()
        return failure

    return opened.addTimeout(WAIT, reactor).addErrback(failed)


def gather(ds: list[Deferred[Any]]) -> Deferred[list[Any]]:
    if not ds:
        return succeed([])
    return gatherResults(ds, consumeErrors=True).addErrback(lambda f: f.value.subFailure)
