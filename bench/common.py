"""Shared helpers of the benchmarks: processes, pinning, /proc, statistics.

Everything here runs on loopback only. Servers under test run as separate
processes pinned to core 0 (``taskset -c 0``), load generators pinned to
core 1, so a figure is "what one core of this machine does".
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
PYTHON = sys.executable
TWISTD = os.path.join(os.path.dirname(PYTHON), "twistd")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- pinning ------------------------------------------------------------------

def cores() -> int:
    return len(os.sched_getaffinity(0))


def pinned(core: int, argv: Sequence[str]) -> list[str]:
    """``argv`` under ``taskset -c core`` when there are two cores or more."""
    if shutil.which("taskset") and cores() >= 2:
        return ["taskset", "-c", str(core), *argv]
    return list(argv)


SERVER_CORE, LOAD_CORE = 0, 1


# -- ports and processes ----------------------------------------------------------

def free_ports(n: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """Ports free right now on 127.0.0.1 (TCP and UDP alike)."""
    found: list[int] = []
    held = []
    while len(found) < n:
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == socket.SOCK_STREAM
                              else socket.SOCK_STREAM)
        try:
            other.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        finally:
            other.close()
        held.append(s)
        found.append(port)
    for s in held:
        s.close()
    return found


@dataclass
class Server:
    """A server process under test; its output goes to ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: str
    started: float
    port: int | None = None
    ready_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def wait_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait (bounded) for a line of the server's output matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text())
            if match:
                return match
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            time.sleep(0.01)
        raise RuntimeError(f"{self.name}: no {pattern!r} within {timeout} s:\n{self.text()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)


def start_process(name: str, argv: Sequence[str], workdir: str, core: int = SERVER_CORE) -> Server:
    os.makedirs(workdir, exist_ok=True)
    log = os.path.join(workdir, f"{name}.log")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    env["PYTHONUNBUFFERED"] = "1"
    with open(log, "wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(pinned(core, argv), stdout=out, stderr=subprocess.STDOUT,
                                cwd=workdir, env=env)
    return Server(name, proc, log, started)


RUN = ["-n", "--pidfile=", "--logfile=-", "meteremu"]


def write_config(workdir: str, text: str) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "meteremu.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def meteremu_config(workdir: str, udp_ports: Sequence[int] = (), modbus_port: int | None = None,
                    websocket: bool = True, interval: str = "1s", device_extra: str = "",
                    persist: str = "30s", level: str = "info") -> str:
    """A config shaped like etc/meteremu.yaml, on 127.0.0.1 only."""
    modbus = f"\n    modbus_port: {modbus_port}" if modbus_port else ""
    return write_config(workdir, f"""\
logging:
  level: {level}
server:
  host: 127.0.0.1
  http_port: 0
meters:
  grid:
    source:
      type: simulator
      interval: {interval}
      seed: 1
store:
  path: {os.path.join(workdir, 'state.db')}
  persist_interval: {persist}
devices:
  - type: shelly_pro_3em
    meter: grid
    mac: auto
    on_stale: error
    websocket: {'true' if websocket else 'false'}
    udp_ports: [{', '.join(str(p) for p in udp_ports)}]{modbus}
    mdns: false{device_extra}
""")


def start_meteremu(workdir: str, config: str, name: str = "meteremu") -> Server:
    """The installed package under twistd, pinned to the server core."""
    server = start_process(name, [TWISTD, *RUN, "--config", config], workdir)
    match = server.wait_line(r"serving on HTTP port\(s\) (\d+)")
    server.port = int(match.group(1))
    server.ready_at = time.monotonic()
    return server


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback only)
        return response.read()


# -- /proc -------------------------------------------------------------------------

def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and its parts (RssAnon: private heap; RssFile: mapped files such as
    shared libraries, shared with other processes) and PSS, in MiB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(line.split()[1]) / 1024
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    out["Pss"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as handle:
        return " ".join(handle.read().split()[:3])


def machine_busy(seconds: float = 1.0) -> float:
    """Share of all cores busy over ``seconds`` (0..1), from /proc/stat."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)
    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


# -- statistics ------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def summary_ms(values_ns: Sequence[int] | Sequence[float], scale: float = 1e-6) -> dict[str, float]:
    """p50/p99/p99.9/max (in ms) of latencies given in ns (or seconds with scale=1e3)."""
    ordered = sorted(values_ns)
    return {"n": len(ordered),
            "p50": percentile(ordered, 50) * scale, "p99": percentile(ordered, 99) * scale,
            "p999": percentile(ordered, 99.9) * scale,
            "max": (ordered[-1] * scale) if ordered else float("nan")}


def window_slopes(points: Sequence[tuple[float, float]], parts: int) -> list[tuple[float, float, float]]:
    """(start, end, slope per hour) of ``parts`` equal time windows of the points."""
    if len(points) < 2 * parts:
        return []
    end = points[-1][0]
    edges = [end * i / parts for i in range(parts + 1)]
    return [(a, b, slope_per_hour([p for p in points if a <= p[0] <= b])) for a, b in itertools.pairwise(edges)]


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return float("nan")
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return sxy / sxx * 3600


# -- machine and versions ---------------------------------------------------------------

def machine() -> dict[str, Any]:
    from meteremu.hostinfo import cpu_model
    model = cpu_model()
    mem = 0.0
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024 / 1024
    versions = {}
    from importlib.metadata import PackageNotFoundError, version
    for name in ("meteremu", "twisted", "autobahn", "pymodbus", "klein"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    wrk = "not installed"
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        wrk = (out.stdout + out.stderr).split("[")[0].strip() or wrk
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": cores(),
            "ram_gib": round(mem, 1), "kernel": platform.release(),
            "python": platform.python_version(), "versions": versions, "wrk": wrk,
            "taskset": bool(shutil.which("taskset")) and cores() >= 2}


def run_json(argv: Sequence[str], timeout: float, core: int = LOAD_CORE) -> dict[str, Any]:
    """Run a load generator (pinned to the load core); it prints one JSON object."""
    out = subprocess.run(pinned(core, argv), capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[1] if len(argv) > 1 else argv[0]} failed ({out.returncode}):\n"
                           f"{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
