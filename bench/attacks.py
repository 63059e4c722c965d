"""Hostile-network benchmark (issue #22): the service under each attack, seen by a well-behaved battery.

``bench/run --attacks`` (or ``--only attacks``) starts the installed meteremu
under twistd (HTTP, WebSocket, UDP and Modbus TCP on 127.0.0.1, a conf.d
directory), then runs each attack for ``--attack-seconds`` (default 10 s,
at most 60) while a battery polls UDP ``EM.GetStatus`` 50 times a second from
127.0.0.1, and records:

* the battery's p99 round trip during the attack (goal < 10 ms; a poll not
  answered within 1 s counts as 1 s and as lost),
* peak RSS during the attack (goal < 120 MiB) and RSS ``settle`` seconds after
  it stopped, against RSS just before it (goal: within 10 %),
* peak open files of the server against ``server.max_connections`` and the
  process's open-files limit,
* log lines the server wrote during the attack (the log-flood goal).

Each attack runs ``--attack-repeats`` times (default 2): on a shared machine
the battery's latency is taken from the least disturbed run, as the UDP
section does with its best-of-three.

Every attacker is a separate process (``python bench/attacks.py attack NAME
…``) pinned to the load core, so it competes with the server as a LAN client
would; attacks that need many connections or UDP sources spread them over
127.0.0.0/8 addresses (several hosts on a LAN), the others come from one.
Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from common import (
    LOAD_CORE,
    PYTHON,
    Server,
    free_ports,
    percentile,
    pinned,
    rss_mib,
    start_meteremu,
    write_config,
)

ATTACKS = ("upgrade_body", "ws_pings", "http_pipeline", "modbus_silent", "modbus_noread", "ws_continuation",
           "huge_post", "slowloris", "udp_spoof", "udp_amplification", "log_flood", "huge_confd")
POLL_HZ = 50
POLL_TIMEOUT = 1.0
MAX_CONNECTIONS = 512  # the server: section's default, written into the config below

UPGRADE = (b"GET /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


# -- the server ----------------------------------------------------------------------------------------

def attack_config(workdir: str, udp_port: int, modbus_port: int, confd: str) -> str:
    return write_config(workdir, f"""\
logging:
  level: info
server:
  host: 127.0.0.1
  http_port: 0
  max_connections: {MAX_CONNECTIONS}
conf_dir: {confd}
store:
  path: {os.path.join(workdir, 'state.db')}
  persist_interval: 30s
meters:
  grid:
    source: {{type: simulator, interval: 1s, seed: 1}}
devices:
  - type: shelly_pro_3em
    meter: grid
    mac: auto
    udp_ports: [{udp_port}]
    modbus_port: {modbus_port}
    mdns: false
""")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def files_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return -1


def log_lines(server: Server) -> int:
    return server.text().count("\n")


def merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for repeated runs of an attack: the battery's figures from the least disturbed run
    (other work on the machine only ever adds latency), memory and files from all of them."""
    best = dict(min(runs, key=lambda r: r["p99_ms"]))
    best.update(before_rss=runs[0]["before_rss"], after_rss=runs[-1]["after_rss"],
                peak_rss=max(r["peak_rss"] for r in runs), peak_files=max(r["peak_files"] for r in runs),
                log_lines=max(r["log_lines"] for r in runs), p99_runs=[round(r["p99_ms"], 2) for r in runs])
    return best


def bench_attacks(seconds: float, settle: float, work: str, only: list[str] | None = None,
                  repeats: int = 1) -> dict[str, Any]:
    """Start the service, run each attack with the battery polling; one row per attack."""
    udp_port, modbus_port = free_ports(2)
    confd = os.path.join(work, "attacks", "conf.d")
    os.makedirs(confd, exist_ok=True)
    server = start_meteremu(os.path.join(work, "attacks"),
                            attack_config(os.path.join(work, "attacks"), udp_port, modbus_port, confd))
    ports = {"http": server.port or 0, "udp": udp_port, "modbus": modbus_port}
    rows = []
    try:
        time.sleep(settle)  # start-up garbage released, first readings in
        baseline = rss_mib(server.pid)
        rows.append(merged([run_one(server, ports, None, seconds, settle, confd) for _ in range(repeats)]))
        for name in only or ATTACKS:
            rows.append(merged([run_one(server, ports, name, seconds, settle, confd) for _ in range(repeats)]))
        final = rss_mib(server.pid)
        limit = files_limit(server.pid)
    finally:
        server.stop()
    return {"rows": rows, "seconds": seconds, "settle": settle, "baseline_rss": baseline, "final_rss": final,
            "files_limit": limit, "max_connections": MAX_CONNECTIONS, "poll_hz": POLL_HZ, "repeats": repeats}


def run_one(server: Server, ports: dict[str, int], name: str | None, seconds: float, settle: float,
            confd: str) -> dict[str, Any]:
    pid = server.pid
    before = rss_mib(pid)
    lines0 = log_lines(server)
    poller = Poller(ports["udp"])
    poller.start()
    attacker = None
    if name is not None:
        argv = [PYTHON, os.path.abspath(__file__), "attack", name, "--seconds", str(seconds),
                "--http", str(ports["http"]), "--udp", str(ports["udp"]), "--modbus", str(ports["modbus"]),
                "--confd", confd]
        attacker = subprocess.Popen(pinned(LOAD_CORE, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_rss, peak_files = before, open_files(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end or (attacker is not None and attacker.poll() is None
                                     and time.monotonic() < end + 30):
        peak_rss = max(peak_rss, rss_mib(pid))
        peak_files = max(peak_files, open_files(pid))
        time.sleep(0.1)
    stats = poller.stop()
    report: dict[str, Any] = {}
    if attacker is not None:
        if attacker.poll() is None:
            attacker.kill()
        out, err = attacker.communicate(timeout=30)
        try:
            report = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {"error": err.decode()[-500:]}
    lines = log_lines(server) - lines0
    time.sleep(settle)
    after = rss_mib(pid)
    row = {"attack": name or "(none: baseline)", "before_rss": before, "peak_rss": peak_rss, "after_rss": after,
           "peak_files": peak_files, "log_lines": lines, "attacker": report, **stats}
    print(f"  {row['attack']:18} battery p99 {stats['p99_ms']:7.2f} ms (lost {stats['lost']}/{stats['sent']}), "
          f"RSS {before:.1f} → peak {peak_rss:.1f} → {after:.1f} MiB, files {peak_files}, "
          f"log lines {lines}; attacker {report}", flush=True)
    return row


class Poller:
    """A battery: UDP EM.GetStatus at POLL_HZ from 127.0.0.1, round trips in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.01)
        self.rtts: list[float] = []
        self.sent = 0
        self.pending: dict[int, float] = {}
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        period = 1 / POLL_HZ
        next_send = time.perf_counter()
        while self.running:
            now = time.perf_counter()
            if now >= next_send:
                self.sent += 1
                self.pending[self.sent] = now
                frame = {"id": self.sent, "src": "battery", "method": "EM.GetStatus", "params": {"id": 0}}
                self.sock.sendto(json.dumps(frame).encode(), ("127.0.0.1", self.port))
                next_send += period
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            received = time.perf_counter()
            try:
                frame_id = json.loads(data).get("id")
            except ValueError:
                continue
            sent = self.pending.pop(frame_id, None)
            if sent is not None:
                self.rtts.append(received - sent)

    def stop(self) -> dict[str, Any]:
        time.sleep(POLL_TIMEOUT)  # the last polls' answers
        self.running = False
        self.thread.join()
        self.sock.close()
        lost = len(self.pending)
        values = sorted([*self.rtts, *([POLL_TIMEOUT] * lost)])
        return {"sent": self.sent, "lost": lost, "p50_ms": percentile(values, 50) * 1e3,
                "p99_ms": percentile(values, 99) * 1e3, "max_ms": (values[-1] if values else float("nan")) * 1e3}


# -- the report -----------------------------------------------------------------------------------------------

BEGIN, END = "<!-- attacks: written by bench/run --attacks -->", "<!-- /attacks -->"
GOAL_P99_MS, GOAL_RSS_MIB, GOAL_RETURN = 10.0, 120.0, 0.10


def row_goals(row: dict[str, Any], limit: int) -> dict[str, bool]:
    return {"p99": row["p99_ms"] < GOAL_P99_MS and row["lost"] == 0,
            "peak": row["peak_rss"] < GOAL_RSS_MIB,
            "back": row["after_rss"] <= row["before_rss"] * (1 + GOAL_RETURN),
            "files": row["peak_files"] < min(limit, MAX_CONNECTIONS + 128)}


def goals(res: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """Rows for the report's goal table."""
    rows = [r for r in res["rows"] if not r["attack"].startswith("(")]
    if not rows:
        return []
    limit = res["files_limit"]
    worst = max(rows, key=lambda r: r["p99_ms"])
    peak = max(rows, key=lambda r: r["peak_rss"])
    back = max(rows, key=lambda r: r["after_rss"] / r["before_rss"])
    files = max(rows, key=lambda r: r["peak_files"])
    quiet = res["rows"][0]
    return [
        (f"Attacks ({len(rows)}): battery UDP p99, worst", f"< {GOAL_P99_MS:g} ms",
         f"{worst['p99_ms']:.2f} ms ({worst['attack']}; {worst['lost']} lost; no attack: {quiet['p99_ms']:.2f} ms)",
         all(row_goals(r, limit)["p99"] for r in rows)),
        ("Attacks: peak RSS, worst", f"< {GOAL_RSS_MIB:g} MiB", f"{peak['peak_rss']:.1f} MiB ({peak['attack']})",
         all(row_goals(r, limit)["peak"] for r in rows)),
        ("Attacks: RSS after vs before, worst", f"≤ +{GOAL_RETURN:.0%}",
         f"{back['after_rss'] / back['before_rss'] - 1:+.1%} ({back['attack']}); "
         f"{res['final_rss'] / res['baseline_rss'] - 1:+.1%} over all attacks",
         all(row_goals(r, limit)["back"] for r in rows)),
        ("Attacks: open files, peak", f"< cap ({MAX_CONNECTIONS} connections + 128)",
         f"{files['peak_files']} ({files['attack']}; limit {limit})", all(row_goals(r, limit)["files"] for r in rows)),
    ]


def section(res: dict[str, Any], info: dict[str, Any] | None = None, started: str | None = None) -> list[str]:
    """The attacks section of docs/performance.md, between markers (``bench/run --attacks`` replaces it)."""
    limit = res["files_limit"]
    lines = [BEGIN, "## 7. Under attack (issue #22)", ""]
    if info is not None:
        lines += [f"Measured {started} on {info['cpu']}, {info['usable_cores']} usable cores, "
                  f"Linux {info['kernel']}, Python {info['python']}, at {info['source']}; "
                  f"load average before / after {res.get('load_before', '?')} / {res.get('load_after', '?')}.", ""]
    lines += [
        "The installed meteremu under twistd (HTTP, WebSocket, UDP and Modbus TCP on 127.0.0.1, a conf.d",
        f"directory, default `server:` caps: {MAX_CONNECTIONS} connections, 64 per address, 32 Modbus). Each",
        f"attack runs {res['seconds']:g} s (`--attack-seconds`, at most 60) from its own process on the load core,",
        f"while a battery polls UDP `EM.GetStatus` {res['poll_hz']} times a second from 127.0.0.1 (a poll not",
        'answered within 1 s counts as 1 s, and as lost). RSS "after" is taken '
        f"{res['settle']:g} s after the attacker stopped;",
        f'"before" just before it started. Open files: peak `/proc/PID/fd` count (process limit {limit}).',
        "Goals: p99 < 10 ms, RSS < 120 MiB and back within 10 % of before, open files under the cap.",
        "The first row has no attack: the machine's own noise (two cores shared with other work).",
        f"Each attack ran {res.get('repeats', 1)} time(s) (`--attack-repeats`); the battery's figures are those of",
        "the least disturbed run (other work on the machine only ever adds latency; \"p99 of each run\" lists",
        "all), memory and open files the worst of all runs, RSS before/after those of the first/last run.",
        "",
        "| attack | battery p50 / p99 / max ms | p99 of each run | lost | RSS before → peak → after MiB "
        "| open files | server log lines | what the attacker saw | goals |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        ok = row_goals(r, limit)
        failed = [name for name, good in ok.items() if not good]
        seen = ", ".join(f"{k} {v}" for k, v in sorted(r["attacker"].items()) if k != "open") or "-"
        each = ", ".join(f"{v:.1f}" for v in r.get("p99_runs", [r["p99_ms"]]))
        lines.append(f"| {r['attack']} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} / {r['max_ms']:.0f} | {each} "
                     f"| {r['lost']}/{r['sent']} "
                     f"| {r['before_rss']:.1f} → {r['peak_rss']:.1f} → {r['after_rss']:.1f} | {r['peak_files']} "
                     f"| {r['log_lines']} | {seen} | {'pass' if not failed else 'FAIL: ' + ', '.join(failed)} |")
    lines += ["", f"RSS at the start {res['baseline_rss']:.1f} MiB, after all attacks {res['final_rss']:.1f} MiB.", ""]
    lines += FINDINGS + [END, ""]
    return lines


def goal_rows(res: dict[str, Any]) -> list[str]:
    verdict = {None: "n/a", True: "**pass**", False: "**FAIL**"}
    return [f"| {name} | {target} | {measured} | {verdict[ok]} |" for name, target, measured, ok in goals(res)]


def splice_goals(document: str, rows: list[str], prefix: str = "| Attacks") -> str:
    """The report's goal table with its rows starting with ``prefix`` replaced by ``rows``."""
    lines = document.split("\n")
    if "## Goals" not in lines:
        return document
    start = lines.index("## Goals")
    end = start + 1
    while end < len(lines) and not lines[end].startswith("## "):
        end += 1
    table = [line for line in lines[start:end] if not line.startswith(prefix)]
    last = max(i for i, line in enumerate(table) if line.startswith("|"))
    table[last + 1:last + 1] = rows
    return "\n".join(lines[:start] + table + lines[end:])


FINDINGS = [
    "What this benchmark found, and what changed because of it (each with a regression test in",
    "`tests/integration/test_connections.py`):",
    "",
    "* Pipelined HTTP requests and Modbus requests of one connection were answered a whole read at a time",
    "  (a 64 KiB read holds about 1,500 HTTP or 5,000 Modbus requests): the battery's p99 was 115 ms and",
    "  213 ms. Now at most 4 pipelined HTTP and 8 Modbus requests of a connection are answered per",
    "  reactor turn.",
    "* Autobahn logged a warning for every WebSocket connection it dropped: 720 lines in 5 s under the",
    "  continuation-frame attack. Its per-connection lines now go through `RateLimitedLog`.",
    "* A closed connection kept its unsent bytes (512 KiB per WebSocket client that stopped reading)",
    "  until a full garbage collection, because a protocol and its transport refer to each other: RSS",
    "  stayed 15 MiB (30 %) above the baseline for minutes after the ping flood. They are let go at",
    "  `connectionLost` now. (A `malloc_trim` after connections closed was tried too, and removed: under",
    "  the ping flood it cost the battery a p99 of 34-43 ms, 2.4 ms without it, for 0.5 MiB.)",
    "* A full garbage collection walked the ~70,000 objects made at start-up (40-46 ms here); they are",
    "  frozen out of the collector (`gc.freeze`) once the service is up.",
    "",
    "What remains:",
    "",
    "* Noise: while other work shared the two cores (load average 2-3), single runs had a p99 of",
    "  40-100 ms that the next run of the same attack did not repeat (the battery's poller thread runs",
    "  in the benchmark process, unpinned, while the attacker saturates the load core). Compare \"p99",
    "  of each run\" and the no-attack row before quoting a figure.",
    "* RSS does not come all the way back: each attack stays within 10 % of where it started, but",
    "  after the whole set RSS is 6-10 MiB (13-19 %) above the start, mostly after slowloris (512",
    "  half-open HTTP connections at once) and the WebSocket ping flood. No",
    "  connection objects survive: `tests/integration/test_resources.py` checks that for WebSocket",
    "  clients with weak references, and the same check by hand after 300 slowloris connections (200",
    "  of them evicted) found none of the 300 HTTP channels alive. For the ping flood, neither",
    "  `malloc_trim` nor a full collection gave the rest back (checked in-process): it is the",
    "  allocators' high-water mark (Python's small-object arenas, in which a few longer-lived objects",
    "  sit). For slowloris the split was not measured.",
    "* UDP floods share the battery's socket: at 5,000 datagrams a second the battery's poll queues",
    "  behind them; the per-source budgets (issue #22 items 10-12) keep the cost of each low.",
    "",
]


def splice(document: str, lines: list[str], rows: list[str] | None = None) -> str:
    """``document`` with its attacks section replaced (or inserted before the findings)."""
    if rows:
        document = splice_goals(document, rows)
    block = "\n".join(lines)
    if BEGIN in document and END in document:
        head, rest = document.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + block.rstrip("\n") + tail
    for anchor in ("## Findings and profiles", "## How to reproduce"):
        if anchor in document:
            head, tail = document.split(anchor, 1)
            return head + block + "\n" + anchor + tail
    return document.rstrip("\n") + "\n\n" + block


# -- the attackers (each runs in its own process) --------------------------------------------------------

class Target:
    def __init__(self, args: argparse.Namespace) -> None:
        self.http, self.udp, self.modbus = args.http, args.udp, args.modbus
        self.confd = args.confd
        self.until = time.monotonic() + args.seconds
        self.counts: dict[str, int] = {}

    def running(self) -> bool:
        return time.monotonic() < self.until

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


def connect(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        s.bind((source, 0))
        s.settimeout(2.0)
        s.connect(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s


def spread(index: int, per_address: int, net: int) -> str:
    """Source address number ``index // per_address`` in 127.<net>.0.0/16."""
    n = index // per_address + 1
    return f"127.{net}.{n // 250}.{n % 250 + 1}"


def masked(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    mask = os.urandom(4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + data


def ws_open(t: Target) -> socket.socket | None:
    s = connect(t.http, rcvbuf=8192)
    if s is None:
        return None
    try:
        s.sendall(UPGRADE + b"\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("closed")
            head += chunk
    except OSError:
        s.close()
        return None
    if not head.startswith(b"HTTP/1.1 101"):
        s.close()
        return None
    return s


def flood(t: Target, open_one: Callable[[], socket.socket | None], burst: bytes, streams: int = 4,
          first: bytes = b"") -> None:
    """``streams`` connections, each sent ``burst`` again and again without reading; reopened when dropped."""
    socks: list[socket.socket | None] = [None] * streams
    while t.running():
        for i, s in enumerate(socks):
            if s is None:
                s = socks[i] = open_one()
                if s is None:
                    t.count("refused")
                    continue
                t.count("connections")
                s.setblocking(False)
                if first:
                    try:
                        s.send(first)
                    except OSError:
                        pass
            try:
                sent = s.send(burst)
                t.count("bytes", sent)
            except BlockingIOError:
                pass
            except OSError:
                t.count("dropped")
                s.close()
                socks[i] = None
        time.sleep(0.002)
    for s in socks:
        if s is not None:
            s.close()


def attack_upgrade_body(t: Target) -> None:
    body = masked(0x9) * (2 * 1024 * 1024 // 6)
    while t.running():
        s = connect(t.http)
        if s is None:
            t.count("refused")
            continue
        try:
            s.sendall(UPGRADE + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            t.count("sent")
        except OSError:
            t.count("cut off")
        try:
            answer = s.recv(200)
            t.count("answered " + answer[9:12].decode(errors="replace") if answer else "closed")
        except OSError:
            pass
        s.close()


def attack_ws_pings(t: Target) -> None:
    flood(t, lambda: ws_open(t), masked(0x9, b"p" * 125) * 256)


def attack_ws_continuation(t: Target) -> None:
    flood(t, lambda: ws_open(t), masked(0x0, fin=False) * 1000, first=masked(0x1, b"{", fin=False))


def attack_http_pipeline(t: Target) -> None:
    flood(t, lambda: connect(t.http, rcvbuf=8192),
          b"GET /rpc/EM.GetStatus?id=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 200)


def attack_modbus_noread(t: Target) -> None:
    frame = b"".join(struct.pack(">HHHBBHH", tid, 0, 6, 1, 0x04, 1000, 80) for tid in range(500))
    flood(t, lambda: connect(t.modbus, rcvbuf=8192), frame)


def attack_huge_post(t: Target) -> None:
    flood(t, lambda: connect(t.http), b"x" * 65536, streams=2,
          first=b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n")


def hold_many(t: Target, port: int, total: int, per_address: int, net: int, first: bytes, trickle: bytes) -> None:
    """``total`` connections from many addresses, kept open (reopened when closed), sent ``trickle`` each second."""
    selector = selectors.DefaultSelector()
    socks: dict[int, socket.socket] = {}
    last_trickle = time.monotonic()
    while t.running():
        for i in range(total):
            if i in socks or not t.running():
                continue
            s = connect(port, spread(i, per_address, net))
            if s is None:
                t.count("refused")
                continue
            t.count("connections")
            s.setblocking(False)
            try:
                if first:
                    s.send(first)
            except OSError:
                pass
            socks[i] = s
            selector.register(s, selectors.EVENT_READ, i)
        for key, _ in selector.select(timeout=0.05):
            s = socks.pop(key.data)
            selector.unregister(s)
            try:
                data = s.recv(4096)
                if data.startswith(b"HTTP/1.1 408"):
                    t.count("408")
            except OSError:
                pass
            t.count("closed by server")
            s.close()
        if trickle and time.monotonic() - last_trickle > 1.0:
            last_trickle = time.monotonic()
            for s in list(socks.values()):
                try:
                    s.send(trickle)
                except OSError:
                    pass
        t.count("open", 0)
        t.counts["open_at_end"] = len(socks)
    for s in socks.values():
        s.close()


def attack_slowloris(t: Target) -> None:
    hold_many(t, t.http, 1024, 32, 4, b"GET /shelly HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-a: b\r\n")


def attack_modbus_silent(t: Target) -> None:
    hold_many(t, t.modbus, 1050, 50, 3, b"", b"")


def udp_sources(count: int, net: int) -> list[socket.socket]:
    socks = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((spread(i, 1, net), 0))
        s.setblocking(False)
        socks.append(s)
    return socks


def udp_flood(t: Target, socks: list[socket.socket], payload: Callable[[int], bytes], rate: float) -> None:
    n = 0
    start = time.monotonic()
    while t.running():
        due = int((time.monotonic() - start) * rate)
        while n < due:
            s = socks[n % len(socks)]
            try:
                s.sendto(payload(n), ("127.0.0.1", t.udp))
                t.count("sent")
            except OSError:
                t.count("send errors")
            n += 1
        for s in socks[:50]:  # drain some answers so the kernel does not drop ours only
            try:
                while True:
                    t.count("answer bytes", len(s.recv(65536)))
            except OSError:
                pass
        time.sleep(0.001)
    for s in socks:
        s.close()


def attack_udp_spoof(t: Target) -> None:
    socks = udp_sources(2000, 5)
    udp_flood(t, socks, lambda n: b'{"id":%d,"src":"bat","method":"EM.GetStatus","params":{"id":0}}' % n, 2000)


def attack_udp_amplification(t: Target) -> None:
    socks = udp_sources(1, 6)
    udp_flood(t, socks, lambda n: b'{"id":%d,"method":"Shelly.GetStatus"}' % n, 5000)


def attack_log_flood(t: Target) -> None:
    socks = udp_sources(500, 7)
    udp_flood(t, socks, lambda n: b'{"id":%d,"method":"EM.GetStatus","params":{"id":"x' % n, 5000)


def attack_huge_confd(t: Target) -> None:
    path = os.path.join(t.confd, "huge.yaml")
    line = b"# " + b"x" * 1022 + b"\n"
    try:
        while t.running():
            with open(path, "wb") as handle:
                for _ in range(50 * 1024):  # 50 MiB
                    handle.write(line)
            t.count("written")
            time.sleep(1.0)
    finally:
        os.unlink(path)


def attack_main(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    target = Target(args)
    globals()[f"attack_{args.name}"](target)
    print(json.dumps(target.counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    attack = sub.add_parser("attack", help="run one attacker (used by the benchmark)")
    attack.add_argument("name", choices=ATTACKS)
    attack.add_argument("--seconds", type=float, default=10.0)
    attack.add_argument("--http", type=int, required=True)
    attack.add_argument("--udp", type=int, required=True)
    attack.add_argument("--modbus", type=int, required=True)
    attack.add_argument("--confd", required=True)
    args = parser.parse_args()
    if args.command == "attack":
        attack_main(args)


if __name__ == "__main__":
    main()
