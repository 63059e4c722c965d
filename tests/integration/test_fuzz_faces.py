"""Fuzzing the new faces: any HTTP request to the EcoTracker, any options of both faces.

The EcoTracker has no parser of its own (Twisted parses HTTP, the route
takes no parameters), so what is fuzzed is everything that reaches it: any
method, path, query, header and body, fed as raw bytes to the real app's
Site on a memory reactor. Every answer must be a well-formed HTTP answer
(no 500), a JSON body must be strict JSON, and nothing may be logged as an
error. The SMA face reads nothing from the network; its encoder is fuzzed
over any reading in ``tests.unit.test_sma_speedwire``. Both faces' options
go through the config validator with values of any type: a ``ConfigError``
or a config, never another exception.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from meteremu.app import build
from meteremu.config import ConfigError, parse_config
from meteremu.devices.ecotracker.options import Options as EcoOptions
from meteremu.devices.sma.options import Options as SmaOptions
from tests.support import fuzz as fz
from tests.support import sample_reading, test_config

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h"}}}
T0 = 1_700_000_000.0

PATHS = st.one_of(
    st.sampled_from([b"/v1/json", b"/v1/json/", b"/v1/JSON", b"/v1", b"/", b"//v1/json", b"/v1/json/..",
                     b"/v1/%6Ason", b"/v1/json%00", b"*", b"http://x/v1/json", b"/%ff"]),
    fz.any_text.map(lambda t: b"/v1/" + t.encode("utf-8", "surrogatepass")),
)
HEADERS = st.lists(st.sampled_from([
    b"Content-Type: application/json", b"User-Agent: \xff\xfe", b"Host: \xff", b"Accept: */*",
    b"Connection: keep-alive", b"Upgrade: websocket", b"Expect: 100-continue", b"X-Odd: \x01",
]), max_size=4, unique=True)
REQUESTS = st.builds(
    lambda method, path, query, body, extra, version: (
        method + b" " + path + (b"?" + query if query else b"") + b" " + version + b"\r\n"
        + b"Host: 127.0.0.1\r\n" + b"".join(h + b"\r\n" for h in extra)
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body),
    fz.HTTP_METHODS, PATHS, st.binary(max_size=40) | st.just(b""), st.binary(max_size=64), HEADERS,
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))


class EcoTrackerSite:
    """The real app with one EcoTracker, built on a memory reactor, fed raw bytes."""

    def __init__(self, case: SynchronousTestCase, **device: Any) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(T0)
        config = test_config(case.mktemp(), meters=SIM,
                             devices=[{"type": "everhome_ecotracker", "mac": "B43A452249C9", **device}])
        self.app = build(config, self.clock)
        self.app.meters["grid"].update(sample_reading(T0 - 0.5))
        list(self.app.http.values())[0].listen(0, interface="127.0.0.1")
        self.site = self.clock.tcpServers[-1][1]
        self.site.reactor = self.clock

    def request(self, raw: bytes, chunks: list[bytes]) -> tuple[bytes, bool]:
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


class EcoTrackerHttpFuzzTests(SynchronousTestCase):
    def setUp(self) -> None:
        fz.start_clock(self)
        self.klein_url_errors = 0
        self.statuses: set[int] = set()

    def check(self, raw: bytes, out: bytes) -> None:
        # Klein logs a traceback for a non-UTF-8 path or Host and answers 400 itself.
        self.klein_url_errors += len(self.flushLoggedErrors(UnicodeDecodeError))
        failures = self.flushLoggedErrors()
        self.assertEqual(failures, [], f"logged errors for {raw[:300]!r}")
        statuses = fz.http_statuses(out)
        self.assertNotIn(500, statuses, f"HTTP 500 for {raw[:300]!r}: {out[:300]!r}")
        if not statuses:
            return
        status, headers, body = fz.split_http_response(out)
        self.statuses.add(status)
        if headers.get(b"content-type") == b"application/json" and body:
            decoded = fz.strict_json(body)
            if status == 200:
                self.assertEqual(decoded["power"], 1926, body)

    def run_requests(self, site: EcoTrackerSite, target: str, n: int) -> None:
        count = [0]

        @fz.fuzz_settings(n)
        @given(REQUESTS | fz.raw_http_garbage, st.lists(st.integers(min_value=0), max_size=3))
        def prop(raw: bytes, cuts: list[int]) -> None:
            count[0] += 1
            out, _ = site.request(raw, fz.chunked(raw, cuts))
            self.check(raw, out)

        prop()
        fz.record(self, target, count[0], n)

    def test_any_request(self) -> None:
        self.run_requests(EcoTrackerSite(self), "ecotracker.http(any request)", 400)
        self.assertIn(200, self.statuses)  # the document itself was among the answers

    def test_any_request_while_down(self) -> None:
        site = EcoTrackerSite(self)
        site.app.meters["grid"].report_failure("fuzz: down")
        self.run_requests(site, "ecotracker.http(any request, meter down)", 150)
        self.assertIn(503, self.statuses)


class FaceConfigFuzzTests(SynchronousTestCase):
    def test_any_options(self) -> None:
        count = [0]
        devices = st.one_of(
            st.builds(lambda body: {**body, "type": "everhome_ecotracker"},
                      fz.dataclass_dicts(EcoOptions, extra={"on_stale": st.fixed_dictionaries(
                          {"fallback": fz.yaml_values()})})),
            st.builds(lambda body: {**body, "type": "sma_energy_meter"}, fz.dataclass_dicts(SmaOptions)),
        )

        @fz.fuzz_settings(400)
        @given(st.lists(devices, min_size=1, max_size=2))
        def prop(items: list[dict[str, Any]]) -> None:
            count[0] += 1
            try:
                parse_config({"meters": SIM, "devices": items}, "(fuzz)", env={})
            except ConfigError as err:
                self.assertTrue(str(err).startswith("(fuzz): "), str(err))
            except Exception as exc:  # noqa: BLE001
                self.fail(f"parse_config raised {type(exc).__name__}: {str(exc)[:200]} for {fz.short(items)}")

        prop()
        fz.record(self, "config.devices(ecotracker, sma)", count[0], 400)
