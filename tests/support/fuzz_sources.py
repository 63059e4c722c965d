"""Strategies, fixtures and the problem collector for the source-parser fuzz tests.

Builds on :mod:`tests.support.fuzz` (deterministic settings, case counting).
The strategies here are *structure-aware*: they start from the real captures
in ``tests/fixtures/`` and drop, replace, retype and nest JSON fields, put
huge numbers and ``NaN``/``Infinity`` texts into number positions, truncate
and splice the encoded bytes, inject garbage lines into P1 telegrams (with the
CRC recomputed, so that the mutation reaches the parser), and build KMP frames
with any register payload, stuffed and CRC'd.

:class:`Problems` collects what a target found instead of failing at the first
case: escaping exceptions grouped by type and the product line that raised
them, non-finite values grouped by the Reading field, and inputs that took
too long — each with its shortest example — so that one run reports every
distinct bug of a target with its case count.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meteremu.reading import PhaseReading, Reading
from meteremu.sources.dsmr.parse import TelegramFramer, crc16, split_crc
from tests.support import FIXTURES
from tests.support import fuzz as fz

#: a single case slower than this is reported as a (near-)hang
SLOW_CASE = 2.0

# -- the problem collector ---------------------------------------------------------------


def _product_frame(exc: BaseException) -> str:
    """``file:line`` of the innermost frame in meteremu/ (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if f"{os.sep}meteremu{os.sep}" in f.filename]
    frame = (inside or frames or [None])[-1]
    if frame is None:
        return "?"
    path = frame.filename
    if f"{os.sep}meteremu{os.sep}" in path:
        path = "meteremu" + path.split(f"{os.sep}meteremu", 1)[1]
    else:
        path = os.path.basename(path)
    return f"{path}:{frame.lineno} ({frame.name})"


class Problems:
    """Distinct problems of one target: ``{signature: [count, shortest example, detail]}``."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.found: dict[str, list[Any]] = {}

    def __bool__(self) -> bool:
        return bool(self.found)

    def add(self, signature: str, example: Any, detail: str = "") -> None:
        text = fz.short(example, 400)
        entry = self.found.get(signature)
        if entry is None:
            self.found[signature] = [1, text, detail]
            return
        entry[0] += 1
        if len(text) < len(entry[1]):
            entry[1], entry[2] = text, detail

    def exception(self, exc: BaseException, example: Any) -> None:
        self.add(f"{type(exc).__name__} escapes from {_product_frame(exc)}", example, str(exc)[:160])

    def nonfinite(self, where: str, fields: list[str], example: Any) -> None:
        """Grouped by kind of field (``phases[*].current``, ``extras``), the fields in the detail."""
        kinds = sorted({re.sub(r"\[\d+\]", "[*]", f.split("[")[0] if f.startswith("extras") else f)
                        for f in fields})
        self.add(f"non-finite {', '.join(kinds)} in {where}", example, "fields: " + ", ".join(fields[:6]))

    def report(self) -> str:
        lines = [f"PRODUCT BUG(S) found by fuzzing {self.target}:"]
        for signature, (count, example, detail) in sorted(self.found.items()):
            lines.append(f"  * {signature}: {count} case(s){': ' + detail if detail else ''}\n"
                         f"      shortest input: {example}")
        return "\n".join(lines)


PHASE_FIELDS = ("voltage", "current", "act_power", "aprt_power", "pf", "freq")


def _bad(value: Any) -> bool:
    return not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)


def phase_problems(phases: Iterable[PhaseReading], prefix: str = "phases") -> list[str]:
    out = []
    for i, phase in enumerate(phases):
        for name in PHASE_FIELDS:
            if _bad(getattr(phase, name)):
                out.append(f"{prefix}[{i}].{name}")
    return out


def reading_problems(reading: Reading) -> list[str]:
    """The fields of ``reading`` that are not finite numbers."""
    out = phase_problems(reading.phases)
    if _bad(reading.measured_at):
        out.append("measured_at")
    for i, pair in enumerate(reading.energy or ()):
        for j, value in enumerate(pair):
            if _bad(value):
                out.append(f"energy[{i}].{('import', 'export')[j]}")
    for key, value in reading.extras.items():
        if _bad(value):
            out.append(f"extras[{key!r}]")
    return out


def run_target(case: Any, target: str, n: int, strategy: st.SearchStrategy[Any],
               body: Callable[[Any, Problems], None], minimum: int | None = None) -> None:
    """Run ``body`` on ``n`` deterministic draws; record the count; fail with the problems.

    ``body`` calls the parser and catches the parser's own documented errors;
    anything else it raises is recorded as an escaping exception. A case
    slower than :data:`SLOW_CASE` is recorded as a near-hang.
    """
    count = [0]
    problems = Problems(target)

    @fz.fuzz_settings(n)
    @given(strategy)
    def prop(value: Any) -> None:
        count[0] += 1
        started = time.perf_counter()
        try:
            body(value, problems)
        except Exception as exc:  # noqa: BLE001 - the property under test
            problems.exception(exc, value)
        took = time.perf_counter() - started
        if took > SLOW_CASE:
            problems.add(f"an input took {took:.1f} s (near-hang)", value)

    prop()
    fz.record(case, target, count[0], minimum if minimum is not None else n)
    if problems:
        case.fail(problems.report())


# -- JSON: structure-aware mutations --------------------------------------------------------

SPECIAL_NUMBERS = (1e308, -1e308, 1.7976931348623157e308, 1e-310, -5e-324, float("nan"), float("inf"),
                   -float("inf"), 2**63, -(2**64), 10**400, -0.0, 0, 4294967296)
SPECIAL_TEXTS = ("", "NaN", "Infinity", "1e999", "-1e999", "1e-999", "-0", "0x10", " 12 ", "12,5", "1_000",
                 "unavailable", "unknown", "null", "true", "\x00", "\ud800", "9" * 400, "🙂", "2024-06-28T14:12:34",
                 "0001-01-01T00:00:00", "9999-12-31T23:59:59")
SPECIAL_VALUES = (None, True, False, [], {}, [[]], {"": None}) + SPECIAL_NUMBERS + SPECIAL_TEXTS

# Copies: the lists and dicts among them must not be shared between examples
# (a parser that mutates what it is given would leak into the next draw).
special_values = fz.lazy_choice(SPECIAL_VALUES).map(copy.deepcopy)
replacement_values = st.one_of(special_values, fz.json_scalars, fz.json_values(max_leaves=6))


def json_paths(doc: Any, path: tuple[Any, ...] = (), max_depth: int = 64) -> list[tuple[Any, ...]]:
    """Every path into ``doc`` (iterative: fuzzed documents can nest deeply)."""
    out: list[tuple[Any, ...]] = []
    stack = [(doc, path)]
    while stack:
        node, here = stack.pop()
        out.append(here)
        if len(here) >= max_depth:
            continue
        if isinstance(node, dict):
            stack.extend((value, (*here, key)) for key, value in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((value, (*here, index)) for index, value in reversed(list(enumerate(node))))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _retype(value: Any) -> Any:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, str):
        return [value]
    if value is None or isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, int) and abs(value) < 10**100 else {"value": value}


def _apply(doc: Any, path: tuple[Any, ...], op: str, value: Any) -> Any:
    """``doc`` with ``op`` applied at ``path`` (``doc`` itself is modified or replaced)."""
    if op == "wrap":  # nesting around the node; ``value`` is the depth
        target = _get(doc, path)
        for _ in range(value):
            target = [target]
        return _set(doc, path, target)
    if op == "retype":
        return _set(doc, path, _retype(_get(doc, path)))
    if op == "replace":
        return _set(doc, path, value)
    if not path:  # drop / duplicate the root: replace it instead
        return value
    parent = _get(doc, path[:-1])
    key = path[-1]
    if op == "drop":
        if isinstance(parent, dict):
            parent.pop(key, None)
        elif isinstance(parent, list) and 0 <= key < len(parent):
            parent.pop(key)
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif op == "duplicate" and isinstance(parent, dict):
        parent[f"{key}_"] = copy.deepcopy(parent[key])
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


OPS = ("replace", "replace", "replace", "drop", "retype", "duplicate", "wrap")


@st.composite
def mutated_json(draw: Any, docs: tuple[Any, ...]) -> Any:
    """One of ``docs`` with 0-4 structure-aware mutations (numbers are the favourite target)."""
    doc = copy.deepcopy(draw(fz.lazy_choice(docs)))
    for _ in range(draw(st.integers(0, 4))):
        paths = json_paths(doc)
        if draw(st.booleans()):
            numbers = [p for p in paths if isinstance(_get(doc, p), int | float) and not isinstance(_get(doc, p), bool)]
            paths = numbers or paths
        path = paths[draw(st.integers(0, len(paths) - 1))]
        op = draw(st.sampled_from(OPS))
        # Wraps stay shallow enough for deepcopy and json.dumps (4 x 40 levels at
        # most): how far a draw gets must not depend on the interpreter's stack,
        # or hypothesis sees non-deterministic generation. Much deeper documents
        # are fuzzed as raw text (the "deep nesting" byte mutations).
        value = draw(st.sampled_from([2, 40])) if op == "wrap" else draw(replacement_values)
        doc = _apply(doc, path, op, value)
    return doc


_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
NUMBER_TEXTS = fz.HUGE_NUMBER_TEXTS + ("1e308", "-1e308", "4.9e-324", "1E400", "-0", "00012", "1.", ".5", "+1",
                                       "0x1F", "1e+308", "123456789" * 30)


def _encode(doc: Any) -> bytes:
    try:
        return json.dumps(doc, allow_nan=True).encode("utf-8", errors="surrogatepass")
    except (ValueError, RecursionError):
        return b"[]"


def _raw_number(data: bytes, index: int, text: str) -> bytes:
    matches = list(_NUMBER.finditer(data))
    if not matches:
        return data
    m = matches[index % len(matches)]
    return data[: m.start()] + text.encode() + data[m.end():]


def _truncate(data: bytes, at: int) -> bytes:
    return data[: at % (len(data) + 1)]


def _splice(data: bytes, at: int, insert: bytes, cut: int) -> bytes:
    at = at % (len(data) + 1)
    return data[:at] + insert + data[at + cut:]


@st.composite
def json_bodies(draw: Any, docs: tuple[Any, ...]) -> bytes:
    """HTTP/WebSocket bodies built from ``docs``: mutated, then maybe damaged as bytes."""
    data = _encode(draw(mutated_json(docs)))
    how = draw(st.sampled_from(["clean", "clean", "number", "number", "truncate", "splice", "nest", "html"]))
    if how == "number":
        for _ in range(draw(st.integers(1, 3))):
            data = _raw_number(data, draw(st.integers(0, 10**6)), draw(fz.lazy_choice(NUMBER_TEXTS)))
    elif how == "truncate":
        data = _truncate(data, draw(st.integers(0, 10**6)))
    elif how == "splice":
        data = _splice(data, draw(st.integers(0, 10**6)), draw(st.binary(max_size=6)), draw(st.integers(0, 4)))
    elif how == "nest":
        depth = draw(st.sampled_from([10, 500, 5000, 100_000]))
        data = b"[" * depth + data + b"]" * depth
    elif how == "html":
        data = b"<!DOCTYPE html><html><body>" + data[:40] + b"</body></html>"
    return data


any_json_body = st.one_of(
    st.binary(max_size=200),
    st.builds(fz.encode_json, fz.json_values(), st.booleans()),
    fz.deep_nesting(),
    fz.lazy_choice(tuple(t.encode() for t in NUMBER_TEXTS)),
)

# -- fixtures ----------------------------------------------------------------------------------

ENVOY_DIR = os.path.join(FIXTURES, "envoy")


def envoy_files(name: str) -> list[tuple[str, bytes]]:
    """``(folder, body)`` of every fixture folder that has ``name``."""
    out = []
    for folder in sorted(os.listdir(ENVOY_DIR)):
        path = os.path.join(ENVOY_DIR, folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                out.append((folder, handle.read()))
    return out


def envoy_json(name: str) -> list[tuple[str, Any]]:
    out = []
    for folder, body in envoy_files(name):
        try:
            out.append((folder, json.loads(body)))
        except ValueError:
            continue  # 3.x serves HTML for some endpoints
    return out


LIVEDATA_DOC = {
    "connection": {"mqtt_state": "connected", "prov_state": "configured", "auth_state": "ok",
                   "sc_stream": "enabled", "sc_debug": "disabled"},
    "meters": {"last_update": 1686081089, "soc": 0, "main_relay_state": 1, "gen_relay_state": 5,
               "backup_bat_mode": 1, "backup_soc": 0, "phase_count": 3,
               "pv": {"agg_p_mw": 29212, "agg_s_mva": 248309},
               "storage": {"agg_p_mw": 0, "agg_s_mva": 0},
               "grid": {"agg_p_mw": 340582, "agg_s_mva": 934790, "agg_p_ph_a_mw": 1200000,
                        "agg_p_ph_b_mw": -300500, "agg_p_ph_c_mw": 7000},
               "load": {"agg_p_mw": 369794, "agg_s_mva": 1183099},
               "generator": {"agg_p_mw": 0, "agg_s_mva": 0}},
    "tasks": {"task_id": 1813978567, "timestamp": 1685743309},
}


def homewizard_docs() -> tuple[Any, Any]:
    with open(os.path.join(FIXTURES, "homewizard", "v1_api_v1_data_hwe_p1_all.json"), encoding="utf-8") as h:
        v1 = json.load(h)
    with open(os.path.join(FIXTURES, "homewizard", "v2_api_measurement_hwe_p1_3phase.json"),
              encoding="utf-8") as h:
        v2 = json.load(h)
    return v1, v2


# -- P1 telegrams -------------------------------------------------------------------------------

DSMR_DIR = os.path.join(FIXTURES, "dsmr")
DSMR_NAMES = tuple(sorted(n for n in os.listdir(DSMR_DIR) if n.endswith(".txt")))


def dsmr_telegram(name: str) -> bytes:
    with open(os.path.join(DSMR_DIR, name), "rb") as handle:
        return handle.read()


VALUE_TEXTS = ("00.070*kW", "1e999*kW", "1e306*kW", "99999999999999999999.999*kW", "-1.0*kW", "NaN*kW",
               "Infinity*kW", "sNaN*kW", "*kW", "", "0.070*W", "0.070*MW", "0.070*kWh", "0.070", "1e-400*kW",
               "000230.0*V", "1e-320*V", "0*V", "-230*V", "1e400*A", "9" * 300 + "*kWh", "1e999999*kWh",
               "170102192002W", "000101000000W", "991231235959S", "680229240000W", "(1)(2)(3)", "\xff\xfe",
               "0.1*m3", "1e300*m3", "3*GJ", "1e308*GJ")
GARBAGE_LINES = (b"", b"garbage", b"1-0:21.7.0(", b"1-0:21.7.0(1e999*kW)", b"0-0:1.0.0(999999999999W)",
                 b"1-0:99.97.0(9)(0-0:96.7.19)(000101000000W)(4294967295*s)", b"0-1:24.2.1()(*m3)",
                 b"0-1:24.1.0(003)", b"1-3:0.2.8(50)", b"\x00\xff\xfe", b"/XXX5 second header",
                 b"1-0:32.7.0(" + b"9" * 2000 + b"*V)", b"1-0:1.8.1(9e999999*kWh)")


def _telegram_lines(telegram: bytes) -> tuple[bytes, list[bytes], bytes]:
    """``(header, data lines, tail from "!")``."""
    framed = TelegramFramer().feed(telegram)[0]  # Q3D fixtures carry junk after the "!"
    body, _ = split_crc(framed)
    text = body[:-1]  # without "!"
    lines = text.split(b"\r\n")
    return lines[0], lines[1:], b"!"


@st.composite
def mutated_telegrams(draw: Any) -> tuple[str, bytes, bytes]:
    """``(fixture name, original, mutated telegram)``; the CRC is usually recomputed."""
    name = draw(st.sampled_from(DSMR_NAMES))
    original = dsmr_telegram(name)
    header, lines, _ = _telegram_lines(original)
    lines = list(lines)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["value", "value", "value", "inject", "drop", "duplicate", "obis", "cut"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if op == "value" and b"(" in lines[i]:
            start = lines[i].index(b"(")
            text = draw(st.one_of(st.sampled_from(VALUE_TEXTS), st.text(max_size=12)))
            lines[i] = lines[i][:start] + b"(" + text.encode("latin-1", errors="replace") + b")"
        elif op == "inject":
            lines.insert(i, draw(st.one_of(st.sampled_from(GARBAGE_LINES), st.binary(max_size=20))))
        elif op == "drop":
            lines.pop(i)
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "obis":
            lines[i] = re.sub(rb"^\d-\d:\d+\.\d+\.\d+", draw(st.sampled_from(
                [b"1-0:21.7.0", b"1-0:1.7.0", b"0-0:1.0.0", b"1-0:32.7.0", b"0-1:24.2.1", b"1-0:1.8.1", b"9-9:9.9.9"])),
                lines[i])
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    body = b"\r\n".join([header, *lines]) + b"!"
    crc = draw(st.sampled_from(["good", "good", "good", "bad", "none", "short"]))
    if crc == "good":
        tail = f"{crc16(body):04X}".encode()
    elif crc == "bad":
        tail = f"{crc16(body) ^ 0x1:04X}".encode()
    elif crc == "short":
        tail = f"{crc16(body):X}".encode()[:2]
    else:
        tail = b""
    return name, original, body + tail + b"\r\n"


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    return fz.chunked(data, cuts)
