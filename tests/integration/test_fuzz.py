"""Fuzzing every parser and entry point (issue item 7).

Property, everywhere: a well-formed error or a valid answer, never an
exception escaping, never a hang, and the service still answering afterwards.

Two layers:

- **Pure** (``SynchronousTestCase`` + hypothesis ``@given``, thousands of
  cases): the RPC core (bytes and frames of any JSON shape, huge ids, deep
  nesting, invalid UTF-8, lone surrogates), ``answer_datagram``,
  ``parse_query_params``, the whole HTTP site fed raw requests in memory
  (Twisted's parser, Klein's routing, our routes), the Modbus register map
  and the Modbus TCP protocol on a ``StringTransport``, and the config
  (``parse_config`` on any document, ``load_config`` on any text or bytes).
- **Live** (a real meteremu on port 0, a few hundred cases per transport): a
  deterministic hypothesis corpus replayed as UDP datagrams, raw HTTP over
  TCP, WebSocket messages and Modbus TCP bytes, each followed by a valid
  ``EM.GetStatus`` that must still be answered.

Hypothesis runs derandomized without a database (``tests/support/fuzz.py``),
so CI draws the same cases every run; each target logs
``fuzz: <target>: <N> cases`` and checks that at least its minimum ran.
Envoy/Home Assistant/DSMR payload parsers are fuzzed beside their own tests.

Tests named ``test_bug_*`` pin product bugs the fuzzing found, one input each,
so every bug fails on its own with a message saying what is wrong.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meteremu.app import build
from meteremu.config import ConfigError, load_config, parse_config
from meteremu.devices.shelly import jsonfmt, rpc
from meteremu.devices.shelly.http import parse_query_params
from meteremu.devices.shelly.modbus import ModbusTcpFactory
from meteremu.devices.shelly.modbus_map import MAX_READ_COUNT, ModbusError, RegisterMap
from meteremu.devices.shelly.options import FallbackPolicy, Options, ScalingOptions
from meteremu.devices.shelly.rpc import CallContext, RpcError
from meteremu.devices.shelly.udp import POLL, answer_datagram, fast_poll, general_answer
from tests.support import fuzz as fz
from tests.support import make_device, sample_reading, start_app, test_config
from tests.support.udp import free_udp_ports

T0 = 1_700_000_000.0
WAIT = fz.WAIT
SIM = {"grid": {"source": {"type": "simulator", "interval": "1h", "start_time": "12:00", "seed": 3}}}
UDP_DROP_REASONS = {"oversize", "garbage", "stale", "throttled"}


def _devices() -> dict[str, Any]:
    """The device variants the pure RPC targets run against."""
    out = {}
    for name, options, fresh in [
        ("triphase", Options(meter="grid"), True),
        ("monophase", Options(meter="grid", profile="monophase"), True),
        ("stale-error", Options(meter="grid"), False),
        ("stale-fallback", Options(meter="grid", on_stale=FallbackPolicy(-300.0)), False),
        ("minimal-divide", Options(meter="grid", payload="minimal",
                                   scaling=ScalingOptions(mode="divide", min_interval=0.5)), True),
    ]:
        clock = Clock()
        clock.advance(T0)
        device = make_device(clock, options)
        device.meter.update(sample_reading(T0 - 0.5))
        if not fresh:
            clock.advance(60.0)
        out[name] = device
    return out


def _logged_errors_message(failures: list[Failure]) -> str:
    return "; ".join(f"{f.type.__name__}: {f.value}" for f in failures[:3])


class PureFuzzCase(SynchronousTestCase):
    """Per-example check that nothing was logged as an error."""

    def setUp(self) -> None:
        fz.start_clock(self)

    def assertNothingLogged(self, what: Any) -> None:
        failures = self.flushLoggedErrors()
        if failures:
            self.fail(f"logged error(s) for {what!r:.300}: {_logged_errors_message(failures)}")


# --------------------------------------------------------------------------
# The RPC core
# --------------------------------------------------------------------------


class RpcCoreFuzzTests(PureFuzzCase):
    def setUp(self) -> None:
        super().setUp()
        self.devices = _devices()
        self.device = self.devices["triphase"]
        self.methods = sorted(self.device.core.methods)
        self.ctx = CallContext("udp", "10.0.0.9", None, "127.0.0.1", None)

    def answer(self, device: Any, data: bytes) -> Any:
        try:
            out = device.core.handle_bytes(data, self.ctx)
        except Exception as exc:  # noqa: BLE001 - the property under test
            self.fail(f"RpcCore.handle_bytes raised {type(exc).__name__}: {exc} for {data[:300]!r}")
        frame = fz.decode_or_none(data) if len(data) <= rpc.MAX_FRAME_BYTES else None
        return fz.check_rpc_answer(self, out, data, device.identity.device_id, frame)

    def test_handle_bytes_arbitrary_bytes(self) -> None:
        count = [0]

        @fz.fuzz_settings(1200)
        @given(st.binary(max_size=300) | st.builds(lambda b: b'{"id":1,' + b, st.binary(max_size=80)),
               st.sampled_from(sorted(self.devices)))
        def prop(data: bytes, variant: str) -> None:
            count[0] += 1
            response = self.answer(self.devices[variant], data)
            if fz.decode_or_none(data) is None:
                self.assertEqual(response["error"]["code"], rpc.PARSE_ERROR, data)

        prop()
        fz.record(self, "rpc.handle_bytes(arbitrary bytes)", count[0], 1200)

    def test_handle_bytes_json_frames(self) -> None:
        count = [0]

        @fz.fuzz_settings(1200)
        @given(fz.frame_bytes(self.methods), st.sampled_from(sorted(self.devices)))
        def prop(data: bytes, variant: str) -> None:
            count[0] += 1
            self.answer(self.devices[variant], data)

        prop()
        fz.record(self, "rpc.handle_bytes(JSON frames)", count[0], 1200)

    def test_handle_bytes_any_json_document(self) -> None:
        count = [0]

        @fz.fuzz_settings(400)
        @given(fz.json_values(st.sampled_from(["id", "method", "src", "params"])), st.booleans())
        def prop(value: Any, ascii_only: bool) -> None:
            count[0] += 1
            self.answer(self.device, fz.encode_json(value, ascii_only))

        prop()
        fz.record(self, "rpc.handle_bytes(any JSON document)", count[0], 400)

    def test_call_every_method_with_any_params(self) -> None:
        """``RpcCore.call`` (the HTTP bare forms' entry): a result or RpcError, nothing else."""
        count = [0]
        params = fz.json_values(fz.PARAM_KEYS) | fz.frame_dicts(self.methods).map(lambda f: f.get("params"))

        @fz.fuzz_settings(600)
        @given(st.sampled_from(self.methods), params, st.sampled_from(sorted(self.devices)))
        def prop(method: str, value: Any, variant: str) -> None:
            count[0] += 1
            device = self.devices[variant]
            try:
                result = device.core.call(method, value, self.ctx)
            except RpcError as err:
                self.assertIn(err.code, fz.KNOWN_ERROR_CODES, (method, value))
                body = jsonfmt.dumpb(err.as_dict())
            except Exception as exc:  # noqa: BLE001
                self.fail(f"RpcCore.call({method!r}, {value!r:.200}) raised {type(exc).__name__}: {exc}")
            else:
                body = jsonfmt.dumpb(result)
            fz.strict_json(body)

        prop()
        fz.record(self, "rpc.call(method, any params)", count[0], 600)

    def test_deep_nesting_and_oversize(self) -> None:
        count = 0
        for size in fz.NESTING_SIZES:
            for kind in fz.NESTING_KINDS:
                data = fz.nesting(size, kind)
                count += 1
                response = self.answer(self.device, data)
                if len(data) > rpc.MAX_FRAME_BYTES or size > rpc.MAX_DEPTH + 1:
                    self.assertIn("error", response, (size, kind))
        for size in (rpc.MAX_FRAME_BYTES, rpc.MAX_FRAME_BYTES + 1, 1_000_000):
            data = b'{"id":1,"method":"Sys.GetStatus","pad":"' + b"x" * size + b'"}'
            count += 1
            response = self.answer(self.device, data)
            self.assertEqual(response["error"]["code"], rpc.PARSE_ERROR)
        fz.record(self, "rpc.handle_bytes(deep nesting, oversize)", count, count)

    def test_huge_ids_are_echoed(self) -> None:
        count = 0
        for text in ["0", "-1", "2147483648", "18446744073709551616", "1" * 4300, "1.5", "1e308", "-0.0",
                     "1e-320", '"x"', '""', '"' + "y" * 5000 + '"']:
            data = b'{"id":%s,"method":"Sys.GetStatus"}' % text.encode()
            count += 1
            response = self.answer(self.device, data)
            self.assertEqual(response["id"], json.loads(text), text[:40])
        fz.record(self, "rpc.handle_bytes(huge ids)", count, count)

    # -- bugs found by the fuzzing (fail until the product is fixed) -------------

    def test_bug_nonfinite_component_id_is_an_invalid_argument(self) -> None:
        """``methods.component_id`` calls ``int(value)`` on inf/nan (json accepts NaN, Infinity, 1e999)."""
        for text in (b"Infinity", b"-Infinity", b"NaN", b"1e999"):
            data = b'{"id":1,"method":"EM.GetStatus","params":{"id":%s}}' % text
            try:
                out = self.device.core.handle_bytes(data, self.ctx)
            except (OverflowError, ValueError) as exc:
                self.fail(f"PRODUCT BUG: params.id={text.decode()} escapes RpcCore.handle_bytes as "
                          f"{type(exc).__name__}: {exc} (meteremu/devices/shelly/methods.py component_id: "
                          f"check math.isfinite before int(); expected error -103)")
            self.assertEqual(json.loads(out)["error"]["code"], rpc.INVALID_ARGUMENT)

    def test_bug_lone_surrogates_in_echoed_strings(self) -> None:
        r"""A JSON ``\ud800`` in id/src/method is echoed and ``jsonfmt.dumpb`` cannot encode it."""
        for data in (b'{"id":"\\ud800","method":"Sys.GetStatus"}',
                     b'{"id":1,"src":"\\udfff","method":"Sys.GetStatus"}',
                     b'{"id":1,"method":"\\ud800"}'):
            try:
                out = self.device.core.handle_bytes(data, self.ctx)
            except UnicodeEncodeError as exc:
                self.fail(f"PRODUCT BUG: {data!r} escapes RpcCore.handle_bytes as UnicodeEncodeError: {exc} "
                          f"(meteremu/devices/shelly/jsonfmt.py _encode uses encode_basestring; use "
                          f"encode_basestring_ascii, which writes lone surrogates as \\ud800 escapes)")
            fz.strict_json(out)


# --------------------------------------------------------------------------
# UDP
# --------------------------------------------------------------------------


class UdpFuzzTests(PureFuzzCase):
    def setUp(self) -> None:
        super().setUp()
        self.devices = _devices()
        self.methods = sorted(self.devices["triphase"].core.methods)
        self.ctx = CallContext("udp", "10.0.0.7", None, "127.0.0.1")

    def test_answer_datagram(self) -> None:
        count = [0]
        datagrams = st.one_of(st.binary(max_size=200), fz.frame_bytes(self.methods),
                              fz.deep_nesting((33, 3000)))

        @fz.fuzz_settings(800)
        @given(datagrams, st.sampled_from(sorted(self.devices)), st.sampled_from([64, 256, 2048, 65507]))
        def prop(data: bytes, variant: str, max_bytes: int) -> None:
            count[0] += 1
            device = self.devices[variant]
            try:
                reply, dropped = answer_datagram(device.core, data, self.ctx, max_bytes)
            except Exception as exc:  # noqa: BLE001
                self.fail(f"answer_datagram raised {type(exc).__name__}: {exc} for {data[:300]!r}")
            self.assertTrue((reply is None) != (dropped is None), (reply, dropped))
            if reply is None:
                self.assertIn(dropped, UDP_DROP_REASONS)
                return
            frame = fz.decode_or_none(data)
            self.assertLessEqual(len(data), max_bytes)
            self.assertIsInstance(frame, dict, "a reply to something that is not a frame")
            self.assertIn("method", frame)
            self.assertIsNotNone(frame.get("id"))
            response = fz.check_rpc_answer(self, reply, data, device.identity.device_id, frame)
            if "error" in response:
                self.assertNotIn(response["error"]["code"], (rpc.UNAVAILABLE, -108), "UDP must stay silent")

        prop()
        fz.record(self, "udp.answer_datagram", count[0], 800)


class UdpFastPathTests(PureFuzzCase):
    """The canonical-poll fast path answers exactly as the general path does.

    Two identical devices side by side (same clock, same options): one
    answers through ``fast_poll``, the other through ``general_answer``; the
    replies, drop reasons, client trackers and error reports must match for
    every poll, including the ones that fail (bad component id, stale meter,
    throttled by ``min_interval``, wrong profile).
    """

    VARIANTS = [
        ("triphase", Options(meter="grid"), True),
        ("monophase", Options(meter="grid", profile="monophase"), True),
        ("stale-error", Options(meter="grid"), False),
        ("stale-hold", Options(meter="grid", on_stale="hold"), False),
        ("stale-fallback", Options(meter="grid", on_stale=FallbackPolicy(-300.0)), False),
        ("minimal-divide", Options(meter="grid", payload="minimal",
                                   scaling=ScalingOptions(mode="divide", min_interval=0.5)), True),
        ("weights", Options(meter="grid", scaling=ScalingOptions(mode="weights", weights={"10.0.0.7": 0.3})), True),
    ]

    def twins(self, options: Options, fresh: bool) -> tuple[Any, Any, Clock, list[Any], list[Any]]:
        clock = Clock()
        clock.advance(T0)
        pair, errors = [], ([], [])
        for log in errors:
            device = make_device(clock, options)
            device.meter.update(sample_reading(T0 - 0.5))
            device.core.error_observers.append(lambda code, ctx, log=log: log.append((code, ctx.peer)))
            pair.append(device)
        if not fresh:
            clock.advance(60.0)
        return pair[0], pair[1], clock, errors[0], errors[1]

    def test_fast_path_equals_general_path(self) -> None:
        count = [0]
        polls = st.tuples(st.one_of(st.integers(0, 10**16 - 1), st.integers(0, 99)),
                          st.sampled_from(["EM.GetStatus", "EM1.GetStatus"]), st.integers(0, 9),
                          st.sampled_from(["10.0.0.7", "10.0.0.8"]), st.sampled_from([0.0, 0.2, 1.0]))

        @fz.fuzz_settings(300)
        @given(st.sampled_from(range(len(self.VARIANTS))), st.lists(polls, min_size=1, max_size=6))
        def prop(variant: int, sequence: list[tuple[int, str, int, str, float]]) -> None:
            count[0] += 1
            name, options, fresh = self.VARIANTS[variant]
            fast, general, clock, fast_errors, general_errors = self.twins(options, fresh)
            for number, method, component, peer, dt in sequence:
                clock.advance(dt)
                data = b'{"id":%d,"method":"%s","params":{"id":%d}}' % (number, method.encode(), component)
                self.assertIsNotNone(POLL.match(data), data)
                ctx = CallContext("udp", peer, None, "127.0.0.1")
                got = fast_poll(fast.core, data, ctx)
                want = general_answer(general.core, data, ctx)
                self.assertEqual(got, want, f"{name}: {data!r}")
            self.assertEqual(fast.clients.overview(), general.clients.overview(), name)
            self.assertEqual(fast_errors, general_errors, name)

        prop()
        fz.record(self, "udp.fast_poll vs general path", count[0], 300)

    def test_other_forms_take_the_general_path(self) -> None:
        device = make_device(Clock())
        ctx = CallContext("udp", "10.0.0.7", None, "127.0.0.1")
        for data in [b'{"id":07,"method":"EM.GetStatus","params":{"id":0}}',  # not JSON
                     b'{"id":-1,"method":"EM.GetStatus","params":{"id":0}}',
                     b'{"id":1.0,"method":"EM.GetStatus","params":{"id":0}}',
                     b'{"id":1,"src":"x","method":"EM.GetStatus","params":{"id":0}}',
                     b'{"id":1,"method":"em.getstatus","params":{"id":0}}',
                     b'{"id": 1,"method":"EM.GetStatus","params":{"id":0}}',
                     b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}\n',
                     b'{"id":12345678901234567,"method":"EM.GetStatus","params":{"id":0}}',
                     b'{"id":1,"method":"EM.GetStatus","params":{"id":10}}']:
            self.assertIsNone(fast_poll(device.core, data, ctx), data)


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class InMemorySite:
    """The real app's Site (built on a Clock, nothing listening), fed raw bytes."""

    def __init__(self, case: SynchronousTestCase, cors: bool = False, **device: Any) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(T0)
        server = {"host": "127.0.0.1", "http_port": 0,
                  "cors": {"enabled": cors, "origins": ["http://ui.local"] if cors else ["*"]}}
        config = test_config(case.mktemp(), meters=SIM, server=server,
                             devices=[{"type": "shelly_pro_3em", "websocket": False, **device}])
        self.app = build(config, self.clock)
        self.app.meters["grid"].update(sample_reading(T0 - 0.5))
        self.device = self.app.devices[0]
        # "Listen" on the memory reactor: that hands us the Site, nothing binds.
        list(self.app.http.values())[0].listen(0, interface="127.0.0.1")
        self.site = self.clock.tcpServers[-1][1]
        self.site.reactor = self.clock  # HTTPChannel timeouts on our clock

    def request(self, raw: bytes, chunks: list[bytes] | None = None) -> tuple[bytes, bool]:
        addr = IPv4Address("TCP", "127.0.0.1", 40000)
        channel = self.site.buildProtocol(addr)
        transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 80), peerAddress=addr)
        channel.makeConnection(transport)
        for chunk in chunks or [raw]:
            if transport.disconnecting:
                break
            channel.dataReceived(chunk)
        out, closed = transport.value(), transport.disconnecting
        channel.connectionLost(Failure(ConnectionDone()))
        return out, closed


class HttpFuzzTests(PureFuzzCase):
    def setUp(self) -> None:
        super().setUp()
        self.site = InMemorySite(self)
        self.cors_site = InMemorySite(self, cors=True, profile="monophase")
        self.methods = sorted(self.site.device.core.methods)
        self.klein_url_errors = 0

    def assertNothingLogged(self, what: Any) -> None:
        # Klein logs a traceback (log.err) for a non-UTF-8 path or Host, then
        # answers 400 itself: counted, reported, not a failure of ours.
        self.klein_url_errors += len(self.flushLoggedErrors(UnicodeDecodeError))
        super().assertNothingLogged(what)

    def test_parse_query_params_arbitrary_bytes(self) -> None:
        count = [0]

        @fz.fuzz_settings(600)
        @given(st.binary(max_size=120) | fz.query_strings(self.methods))
        def prop(query: bytes) -> None:
            count[0] += 1
            try:
                params = parse_query_params(query)
            except Exception as exc:  # noqa: BLE001
                self.fail(f"parse_query_params raised {type(exc).__name__}: {exc} for {query[:200]!r}")
            self.assertIsInstance(params, dict)
            self.assertTrue(all(isinstance(k, str) for k in params))

        prop()
        fz.record(self, "http.parse_query_params", count[0], 600)

    def check_http(self, raw: bytes, out: bytes, closed: bool) -> None:
        self.assertNothingLogged(raw)
        statuses = fz.http_statuses(out)
        self.assertNotIn(500, statuses, f"HTTP 500 for {raw[:300]!r}: {out[:300]!r}")
        if not statuses:
            return  # an incomplete request: nothing answered yet (and nothing logged)
        status, headers, body = fz.split_http_response(out)
        self.assertLess(status, 500 if status != 503 else 600, out[:300])
        if headers.get(b"content-type") == b"application/json" and body:
            try:
                decoded = fz.strict_json(body)
            except ValueError as exc:
                self.fail(f"invalid JSON body ({exc}) for {raw[:300]!r}: {body[:300]!r}")
            if status >= 400 and isinstance(decoded, dict) and "code" in decoded:
                self.assertIn(decoded["code"], fz.KNOWN_ERROR_CODES, body[:300])

    def test_http_requests_in_memory(self) -> None:
        count = [0]

        @fz.fuzz_settings(500)
        @given(fz.http_requests(self.methods), st.lists(st.integers(min_value=0), max_size=3), st.booleans())
        def prop(raw: bytes, cuts: list[int], cors: bool) -> None:
            count[0] += 1
            site = self.cors_site if cors else self.site
            out, closed = site.request(raw, fz.chunked(raw, cuts))
            self.check_http(raw, out, closed)
            if b"Upgrade: websocket" not in raw:
                self.assertTrue(closed or not fz.http_statuses(out) or b"Expect:" in raw,
                                f"Connection: close not honoured for {raw[:200]!r}")

        prop()
        fz.record(self, "http.site(requests, in memory)", count[0], 500)
        fz.log.info("fuzz: http: Klein logged {n} tracebacks for non-UTF-8 URLs", n=self.klein_url_errors)

    def test_http_garbage_in_memory(self) -> None:
        count = [0]

        @fz.fuzz_settings(400)
        @given(fz.raw_http_garbage, st.lists(st.integers(min_value=0), max_size=3), st.booleans())
        def prop(raw: bytes, cuts: list[int], cors: bool) -> None:
            count[0] += 1
            site = self.cors_site if cors else self.site
            out, closed = site.request(raw, fz.chunked(raw, cuts))
            self.check_http(raw, out, closed)

        prop()
        fz.record(self, "http.site(garbage, in memory)", count[0], 400)

    def test_bug_deeply_nested_query_value(self) -> None:
        """``parse_query_params`` catches ValueError only; ``json.loads`` raises RecursionError."""
        query = b"id=" + b"[" * 3000
        try:
            parse_query_params(query)
        except RecursionError:
            self.fail("PRODUCT BUG: GET /rpc/EM.GetStatus?id=[[[…(3000) raises RecursionError in "
                      "meteremu/devices/shelly/http.py parse_query_params (answered 500 by Klein); "
                      "catch (ValueError, RecursionError) and keep the text, or reject over-deep values")

    def test_bug_nonfinite_query_id_gives_500(self) -> None:
        """``?id=Infinity`` / ``?id=NaN`` / ``?id=1e999`` reach ``component_id``'s ``int()``."""
        for value in (b"Infinity", b"NaN", b"1e999"):
            raw = b"GET /rpc/EM.GetStatus?id=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % value
            out, _ = self.site.request(raw)
            failures = self.flushLoggedErrors()
            self.assertEqual(fz.http_statuses(out), [400],
                             f"PRODUCT BUG: GET /rpc/EM.GetStatus?id={value.decode()} answered "
                             f"{fz.http_statuses(out)} and logged {_logged_errors_message(failures)} "
                             f"(methods.py component_id: int() of a non-finite float)")


# --------------------------------------------------------------------------
# Modbus
# --------------------------------------------------------------------------


class ModbusFuzzTests(PureFuzzCase):
    def setUp(self) -> None:
        super().setUp()
        self.devices = _devices()

    def test_register_map_any_address_and_count(self) -> None:
        count = [0]
        maps = {name: RegisterMap(device) for name, device in self.devices.items()}
        edges = sorted({e + d for block in maps["triphase"].blocks + maps["monophase"].blocks
                        for e in (block.start, block.end) for d in (-2, -1, 0, 1)} - {-2, -1})

        @fz.fuzz_settings(1500)
        @given(st.integers(0, 0xFFFF) | st.sampled_from(edges),
               st.integers(-1, MAX_READ_COUNT + 2) | st.integers(0, 0xFFFF), st.sampled_from(sorted(maps)))
        def prop(address: int, n: int, variant: str) -> None:
            count[0] += 1
            regmap = maps[variant]
            inside = any(b.start <= address and address + n <= b.end for b in regmap.blocks)
            try:
                registers = regmap.read(address, n)
            except ModbusError as err:
                self.assertIn(err.code, (2, 3, 4), (address, n))
                if 1 <= n <= MAX_READ_COUNT and inside:
                    self.assertEqual(err.code, 4, f"in-block read {address}+{n} refused: {err.message}")
                return
            except Exception as exc:  # noqa: BLE001
                self.fail(f"RegisterMap.read({address}, {n}) raised {type(exc).__name__}: {exc}")
            self.assertTrue(1 <= n <= MAX_READ_COUNT and inside, (address, n))
            self.assertEqual(len(registers), n)
            self.assertTrue(all(isinstance(r, int) and 0 <= r <= 0xFFFF for r in registers), registers)

        prop()
        fz.record(self, "modbus.RegisterMap.read", count[0], 1500)

    def connect(self, device: Any) -> tuple[Any, StringTransport]:
        proto = ModbusTcpFactory(RegisterMap(device)).buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def responses(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        out = []
        while data:
            self.assertGreaterEqual(len(data), 9, data)
            tid, pid, length, unit = struct.unpack(">HHHB", data[:7])
            self.assertEqual(pid, 0)
            self.assertGreaterEqual(length, 3)
            pdu, data = data[7:6 + length], data[6 + length:]
            self.assertEqual(len(pdu), length - 1, "truncated response")
            out.append((tid, unit, pdu[0], pdu[1:]))
        return out

    def test_protocol_arbitrary_bytes(self) -> None:
        count = [0]

        @fz.fuzz_settings(600)
        @given(st.binary(max_size=300) | st.lists(fz.modbus_frames, max_size=4).map(b"".join).flatmap(
            lambda good: st.builds(lambda junk, at: good[:at] + junk + good[at:], st.binary(max_size=8),
                                   st.integers(0, len(good)))),
            st.lists(st.integers(min_value=0), max_size=5), st.sampled_from(sorted(self.devices)))
        def prop(data: bytes, cuts: list[int], variant: str) -> None:
            count[0] += 1
            proto, transport = self.connect(self.devices[variant])
            try:
                for chunk in fz.chunked(data, cuts):
                    if transport.disconnecting:
                        break
                    proto.dataReceived(chunk)
            except Exception as exc:  # noqa: BLE001
                self.fail(f"ModbusTcpProtocol raised {type(exc).__name__}: {exc} for {data[:200]!r}")
            self.responses(transport.value())
            proto.connectionLost(Failure(ConnectionDone()))
            self.assertNothingLogged(data)

        prop()
        fz.record(self, "modbus.protocol(arbitrary bytes)", count[0], 600)

    def test_protocol_well_framed_requests(self) -> None:
        """Any PDU in a valid MBAP frame: one answer each, in order, same transaction id."""
        count = [0]

        @fz.fuzz_settings(600)
        @given(st.lists(fz.modbus_frames, min_size=1, max_size=6), st.lists(st.integers(min_value=0), max_size=4),
               st.sampled_from(sorted(self.devices)))
        def prop(frames: list[bytes], cuts: list[int], variant: str) -> None:
            count[0] += 1
            proto, transport = self.connect(self.devices[variant])
            data = b"".join(frames)
            for chunk in fz.chunked(data, cuts):
                proto.dataReceived(chunk)
            self.assertFalse(transport.disconnecting, f"well-framed requests closed the connection: {data!r}")
            answers = self.responses(transport.value())
            self.assertEqual([a[0] for a in answers], [struct.unpack(">H", f[:2])[0] for f in frames])
            for frame, (_tid, unit, fc, rest) in zip(frames, answers, strict=True):
                self.assertEqual(unit, frame[6])
                request_fc = frame[7]
                self.assertEqual(fc & 0x7F, request_fc & 0x7F, (frame, fc))
                if fc & 0x80:
                    self.assertIn(rest, (b"\x01", b"\x02", b"\x03", b"\x04", b"\x0b"), (frame, rest))
                else:
                    self.assertEqual(rest[0], len(rest) - 1)
            proto.connectionLost(Failure(ConnectionDone()))
            self.assertNothingLogged(data)

        prop()
        fz.record(self, "modbus.protocol(well-framed requests)", count[0], 600)


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------


def _registry_names() -> tuple[list[str], list[str]]:
    """(exporter names whose module imports, names to keep out of junk keys)."""
    import importlib

    from meteremu.exporters import EXPORTER_MODULES
    from meteremu.sources import SOURCE_MODULES

    usable = []
    for name, module in EXPORTER_MODULES.items():
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - not there yet (or broken): not fuzzed here
            continue
        usable.append(name)
    return usable, [*EXPORTER_MODULES, *SOURCE_MODULES]


def structured_configs() -> st.SearchStrategy[dict[str, Any]]:
    """Documents shaped like a config: real section and option names, values of any type."""
    import dataclasses

    from meteremu import config as cfg
    from meteremu.sources import option_types as source_types

    exporters_ok, reserved = _registry_names()
    simulator = source_types()["simulator"]
    values = fz.yaml_values()
    junk_name = fz.any_text.filter(lambda s: s not in reserved)
    source = st.builds(lambda body, kind: {**body, "type": kind} if kind is not None else body,
                       fz.dataclass_dicts(simulator), st.one_of(st.just("simulator"), st.none(), junk_name,
                                                                values))
    meter = st.fixed_dictionaries({}, optional={"source": source | values, "stale_after": values, "x": values})
    scaling = fz.dataclass_dicts(ScalingOptions)
    device = st.builds(lambda body, kind: {**body, "type": kind} if kind is not None else body,
                       fz.dataclass_dicts(Options, extra={"scaling": scaling | values}),
                       st.one_of(st.just("shelly_pro_3em"), st.none(), junk_name))
    exporters = st.fixed_dictionaries({}, optional={
        "prometheus": st.fixed_dictionaries({}, optional={"enabled": values}) | values,
        **{name: values for name in exporters_ok},
    })
    sections: dict[str, st.SearchStrategy[Any]] = {
        "meters": st.dictionaries(st.sampled_from(["grid", "heat pump", "a.b", "_x"]) | junk_name, meter | values,
                                  max_size=3) | values,
        "devices": st.lists(device | values, max_size=3) | values,
        "exporters": exporters | values,
    }
    simple = {f.name: f.type for f in dataclasses.fields(cfg.Config)}
    for name in simple:
        if name in ("path", "meters", "devices", "exporters"):
            continue
        section_cls = getattr(cfg, "_SIMPLE_SECTIONS", {}).get(name)
        sections[name] = (fz.dataclass_dicts(section_cls) if section_cls is not None else values) | values
    return st.fixed_dictionaries({}, optional=sections)


ENVS = [{}, {"HOME": "/root", "NUM": "42", "EMPTY": ""}, {"NUM": "1e999", "EMPTY": "${NUM}"}]


class ConfigFuzzTests(PureFuzzCase):
    def parse(self, data: Any, env: dict[str, str]) -> None:
        try:
            parse_config(data, "(fuzz)", env=env)
        except ConfigError as err:
            self.assertTrue(str(err).startswith("(fuzz): "), str(err))
        except Exception as exc:  # noqa: BLE001
            self.fail(f"parse_config raised {type(exc).__name__}: {str(exc)[:200]} for {fz.short(data)}")

    def test_parse_config_any_document(self) -> None:
        count = [0]

        @fz.fuzz_settings(400)
        @given(fz.yaml_values(st.sampled_from(["server", "meters", "devices", "store", "logging", "exporters"])),
               st.sampled_from(range(len(ENVS))))
        def prop(data: Any, env: int) -> None:
            count[0] += 1
            self.parse(data, ENVS[env])

        prop()
        fz.record(self, "config.parse_config(any document)", count[0], 400)

    def test_parse_config_structured(self) -> None:
        count = [0]

        @fz.fuzz_settings(600)
        @given(structured_configs(), st.sampled_from(range(len(ENVS))))
        def prop(data: Any, env: int) -> None:
            count[0] += 1
            self.parse(data, ENVS[env])

        prop()
        fz.record(self, "config.parse_config(structured)", count[0], 600)

    def load(self, path: str, content: bytes) -> None:
        with open(path, "wb") as handle:
            handle.write(content)
        try:
            load_config(path, env={})
        except ConfigError as err:
            self.assertTrue(str(err).startswith(path), str(err))
        except Exception as exc:  # noqa: BLE001
            self.fail(f"load_config raised {type(exc).__name__}: {str(exc)[:200]} for {content[:300]!r}")

    def test_load_config_any_text(self) -> None:
        count = [0]
        path = os.path.join(self.mktemp() + ".d", "meteremu.yaml")
        os.makedirs(os.path.dirname(path))

        def dumped(data: Any) -> bytes:
            try:
                return yaml.safe_dump(data, allow_unicode=True).encode("utf-8", errors="surrogatepass")
            except (yaml.YAMLError, ValueError, OverflowError):
                return b""

        texts = st.one_of(
            st.text(max_size=200).map(lambda t: t.encode("utf-8", errors="surrogatepass")),
            st.binary(max_size=120),
            structured_configs().map(dumped),
            st.lists(st.sampled_from(["server:", "  http_port: 80", "meters:", "  grid:", "    source:",
                                      "      type: simulator", "devices:", "  - type: shelly_pro_3em",
                                      "    on_stale: {fallback: 1e400}", "&a [*a]", "- *a", "? [x]", ": y",
                                      "!!binary Zm9v", "!!python/object:os.system", "%YAML 1.1", "---", "...",
                                      "\t", "key: 'unterminated", "a: !!timestamp 2001-12-14", "{", "[", "]"]),
                     max_size=10).map(lambda lines: "\n".join(lines).encode()),
        )

        @fz.fuzz_settings(300)
        @given(texts)
        def prop(content: bytes) -> None:
            count[0] += 1
            self.load(path, content)

        prop()
        fz.record(self, "config.load_config(any text)", count[0], 300)

    # -- bugs found by the fuzzing (fail until the product is fixed) -------------

    def _expect_config_error(self, what: str, call: Callable[[], Any], where: str) -> None:
        try:
            call()
        except ConfigError:
            return
        except Exception as exc:  # noqa: BLE001
            self.fail(f"PRODUCT BUG: {what} raises {type(exc).__name__}: {str(exc)[:120]} instead of "
                      f"ConfigError ({where})")

    def test_bug_huge_numbers_in_config(self) -> None:
        for data, where in [
            ({"store": {"persist_interval": 10**400}},
             "config.py parse_duration: math.isfinite(int) overflows; check isinstance(int) range first"),
            ({"devices": [{"type": "shelly_pro_3em", "notify_epsilon": 10**400}]},
             "config.py convert(): float(value) for hint float overflows; catch OverflowError"),
            ({"devices": [{"type": "shelly_pro_3em", "on_stale": {"fallback": 10**400}}]},
             "config.py convert(): float(value) overflows"),
            ({"server": {"http_port": 10**5000}},
             "ServerOptions.validate / _describe: f-string of a >4300-digit int raises ValueError"),
        ]:
            self._expect_config_error(f"parse_config({fz.short(data, 80)})", lambda d=data: parse_config(d, "(x)", env={}),
                                      where)

    def test_bug_unhashable_type_in_config(self) -> None:
        for data in ({"meters": {"grid": {"source": {"type": ["simulator"]}}}},
                     {"devices": [{"type": {"a": 1}}]}):
            self._expect_config_error(f"parse_config({data!r})", lambda d=data: parse_config(d, "(x)", env={}),
                                      "config.py _typed: `kind not in registry` with a list/dict kind; "
                                      "reject non-string types first")

    def test_bug_yaml_that_breaks_the_loader(self) -> None:
        directory = tempfile.mkdtemp(dir=os.path.abspath("."))
        for name, text, where in [
            ("long-int", "server: {http_port: 1" + "0" * 5000 + "}",
             "config.py _Loader.construct_yaml_int: int() of >4300 digits raises ValueError; catch it"),
            ("deep", "[" * 5000,
             "config.py load_config: yaml.load recursion; catch RecursionError (or limit depth)"),
            ("deep-map", "{a: " * 2000,
             "config.py load_config: yaml.load recursion; catch RecursionError (or limit depth)"),
        ]:
            path = os.path.join(directory, name + ".yaml")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            self._expect_config_error(f"load_config on {name} YAML", lambda p=path: load_config(p, env={}), where)


# --------------------------------------------------------------------------
# Live: a real meteremu, a replayed corpus, then a valid request per transport
# --------------------------------------------------------------------------


def _is_text_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class LiveFuzzTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def start(self) -> Any:
        fz.start_clock(self)
        self.udp_ports = free_udp_ports(2)
        config = test_config(self.mktemp(), meters=SIM, devices=[{
            "type": "shelly_pro_3em", "udp_ports": self.udp_ports, "modbus_port": 0}])
        self.app = yield start_app(self, config)
        self.device = self.app.devices[0]
        self.methods = sorted(self.device.core.methods)
        self.http = self.app.http_port()
        self.modbus = yield self.app.device_services[0].modbus.ready
        self.app.meters["grid"].update(sample_reading(self.app.meters["grid"].latest.measured_at + 1))

    def udp_client(self) -> fz.UdpClient:
        proto = fz.UdpClient()
        port = reactor.listenUDP(0, proto, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return proto

    @inlineCallbacks
    def assertAnswersOnEveryTransport(self) -> Any:
        """A valid EM.GetStatus on UDP, HTTP (both forms), WebSocket and Modbus."""
        device_id = self.device.identity.device_id
        udp = self.udp_client()
        for port in self.udp_ports:
            reply = yield udp.probe(port)
            self.assertIn("result", reply, reply)
        raw = yield fz.raw_exchange(self.http, b"GET /rpc/EM.GetStatus?id=0 HTTP/1.1\r\nHost: x\r\n"
                                            b"Connection: close\r\n\r\n", False)
        status, _, body = fz.split_http_response(raw)
        self.assertEqual(status, 200, raw[:300])
        self.assertIn("total_act_power", fz.strict_json(body))
        frame = b'{"id":5,"method":"EM.GetStatus","params":{"id":0}}'
        raw = yield fz.raw_exchange(self.http, b"POST /rpc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                            b"Content-Length: %d\r\n\r\n%s" % (len(frame), frame), False)
        self.assertEqual(fz.strict_json(fz.split_http_response(raw)[2])["src"], device_id)
        client = yield fz.ws_connect(self.http)
        reply = yield client.probe()
        self.assertIn("result", reply)
        yield client.close()
        # Input register 1013 (total active power), 2 registers: a 13-byte answer.
        raw = yield fz.raw_exchange(self.modbus, fz.mbap(9, 1, b"\x04\x03\xf5\x00\x02"), False, until=13)
        self.assertEqual(raw[:2], b"\x00\x09")
        self.assertEqual(raw[7], 4, raw)

    @inlineCallbacks
    def test_udp_garbage_then_answers(self) -> Any:
        yield self.start()
        cases = fz.corpus(st.one_of(st.binary(max_size=300), fz.frame_bytes(self.methods)), 400)
        client = self.udp_client()
        listener = self.app.device_services[0].udp[0].protocol
        for chunk in _udp_chunks(cases):
            for data in chunk:
                client.send(data, self.udp_ports[0])
            reply = yield client.probe(self.udp_ports[0])  # the service keeps answering
            self.assertIn("result", reply)
        self.assertEqual(sum(listener.dropped.values()) + listener.answered, len(cases) + len(client.probes),
                         "datagrams lost before the server read them (socket buffer overrun?)")
        for raw in client.received:
            fz.check_rpc_answer(self, raw, b"(udp corpus)", self.device.identity.device_id)
        self.assertEqual(listener.dropped.get("error", 0), 0,
                         f"PRODUCT BUG: {listener.dropped.get('error')} datagram(s) raised inside "
                         f"answer_datagram (see the logged errors and RpcCoreFuzzTests.test_bug_*)")
        yield self.assertAnswersOnEveryTransport()
        fz.record(self, "live.udp", len(cases), 400)

    @inlineCallbacks
    def test_http_garbage_then_answers(self) -> Any:
        yield self.start()
        requests = fz.corpus(fz.http_requests(self.methods), 250)
        garbage = fz.corpus(fz.raw_http_garbage, 100)
        cases = [(r, False) for r in requests] + [(g, True) for g in garbage]
        for start in range(0, len(cases), 25):
            batch = cases[start:start + 25]
            try:
                answers = yield fz.gather([fz.raw_exchange(self.http, data, half) for data, half in batch])
            except Exception as exc:  # noqa: BLE001
                self.fail(f"an HTTP exchange did not finish within {WAIT}s (hang?): {exc!r}")
            for (data, _), answer in zip(batch, answers, strict=True):
                self.assertNotIn(500, fz.http_statuses(answer), f"HTTP 500 for {data[:300]!r}")
        self.flushLoggedErrors(UnicodeDecodeError)  # Klein's own log line for non-UTF-8 URLs (answered 400)
        yield self.assertAnswersOnEveryTransport()
        fz.record(self, "live.http", len(cases), 350)

    @inlineCallbacks
    def test_websocket_messages_then_answers(self) -> Any:
        yield self.start()
        messages = fz.corpus(st.one_of(
            st.tuples(fz.frame_bytes(self.methods), st.just(False)),
            st.tuples(st.binary(max_size=200), st.booleans()),
            st.tuples(fz.frame_bytes(self.methods), st.just(True)),
        ), 300)
        valid = [(m, b) for m, b in messages if b or _is_text_utf8(m)]
        invalid = [m for m, b in messages if not b and not _is_text_utf8(m)]
        client = yield fz.ws_connect(self.http)
        for start in range(0, len(valid), 25):
            for payload, binary in valid[start:start + 25]:
                client.sendMessage(payload, isBinary=binary)
            try:
                reply = yield client.probe()
            except Exception:  # noqa: BLE001
                self.fail(f"PRODUCT BUG: the server dropped the WebSocket (close {client.close_info}) on one of "
                          f"messages {start}..{start + 24} (an exception escaped onMessage; see the logged "
                          f"error): {fz.short(valid[start:start + 25], 600)}")
            self.assertIn("result", reply)
        self.assertEqual(client.bad, [], "non-JSON or non-object frames from the server")
        for frame in client.frames:
            if "method" not in frame:  # notifications (NotifyFullStatus…) carry a method
                self.assertEqual(("result" in frame) + ("error" in frame), 1, frame)
        yield client.close()
        # Invalid UTF-8 in a text frame: the server fails the connection (1007, or
        # 1006 as autobahn drops TCP at once: failByDrop), nothing worse.
        for payload in invalid[:20] + [b'{"id":1,"method":"\xed\xa0\x80"}']:
            bad = yield fz.ws_connect(self.http)
            bad.sendMessage(payload, isBinary=False)
            yield bad.lost.addTimeout(WAIT, reactor)
            self.assertIn(bad.close_info[1], (1006, 1007), bad.close_info)
        # Oversize message: 1009, nothing worse.
        big = yield fz.ws_connect(self.http)
        big.sendMessage(b'{"id":1,"method":"Sys.GetStatus","pad":"' + b"x" * 70_000 + b'"}')
        yield big.lost.addTimeout(WAIT, reactor)
        self.assertIn(big.close_info[1], (1006, 1009), big.close_info)
        yield self.assertAnswersOnEveryTransport()
        fz.record(self, "live.websocket", len(valid) + len(invalid[:20]) + 2, 250)

    @inlineCallbacks
    def test_modbus_garbage_then_answers(self) -> Any:
        yield self.start()
        cases = fz.corpus(st.one_of(st.binary(max_size=300), st.lists(fz.modbus_frames, max_size=5).map(b"".join)),
                          150)
        for start in range(0, len(cases), 25):
            try:
                yield fz.gather([fz.raw_exchange(self.modbus, data, True) for data in cases[start:start + 25]])
            except Exception as exc:  # noqa: BLE001
                self.fail(f"a Modbus exchange did not finish within {WAIT}s (hang?): {exc!r}")
        self.assertEqual(self.app.device_services[0].modbus.factory.connections, set())
        yield self.assertAnswersOnEveryTransport()
        fz.record(self, "live.modbus", len(cases), 150)


def _udp_chunks(cases: list[bytes], max_bytes: int = 24_000, max_count: int = 30) -> list[list[bytes]]:
    """Bursts small enough for the server's socket buffer (each followed by a probe)."""
    chunks: list[list[bytes]] = [[]]
    size = 0
    for data in cases:
        if chunks[-1] and (size + len(data) > max_bytes or len(chunks[-1]) >= max_count):
            chunks.append([])
            size = 0
        chunks[-1].append(data)
        size += len(data) + 512
    return chunks
