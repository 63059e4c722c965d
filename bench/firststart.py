"""The first five minutes: what a first ``scripts/run`` costs and when it shows a forecast.

    python bench/firststart.py [results.json]

Runs the installed meteremu under twistd (pinned to core 0, 127.0.0.1 only)
three times, each in a fresh directory unless said otherwise:

1. **Forecasting off** (``etc/meteremu.yaml`` with ``forecast.enabled: false``
   and no backfill): RSS after start and the numpy/scikit-learn/scipy files
   mapped into the process. numpy and scikit-learn are installed by default
   now; the claim is that with forecasting off none of their code is loaded,
   so the service's memory does not change. Zero mapped files proves it.
2. **The demo** (``etc/meteremu.yaml`` as shipped: forecasting on, the
   simulator backfilling 14 days): seconds from spawning twistd to serving,
   to the backfill's end, to the first trained model, and to ``/ui/power``
   showing the model's scores; RSS sampled every 0.1 s (peak while
   backfilling, peak overall, after).
3. **The demo restarted** on the same state: the backfill writes only the
   buckets missing since the first run, and the saved model is loaded.

The figures are for docs/performance.md (the coordinator wires
:func:`section` into bench/runner.py). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

import common  # noqa: E402  (bench/common.py)

DEMO = os.path.join(ROOT, "etc", "meteremu.yaml")
FORECAST_LIBS = ("/numpy/", "/sklearn/", "/scipy/", "numpy.libs", "scikit_learn.libs", "scipy.libs")
TIMEOUT = 180.0


def demo_config(workdir: str, forecasting: bool = True) -> str:
    """etc/meteremu.yaml on 127.0.0.1, port 0, no UDP/Modbus ports, its store in ``workdir``."""
    import yaml

    with open(DEMO, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    data["server"] = {"host": "127.0.0.1", "http_port": 0}
    data["store"]["path"] = os.path.join(workdir, "state.db")
    for device in data.get("devices", []):
        device["udp_ports"] = []
        device.pop("modbus_port", None)
        device["mdns"] = False
    if not forecasting:
        data["forecast"] = {"enabled": False}
        for meter in data["meters"].values():
            meter["source"].pop("backfill", None)
    return common.write_config(workdir, yaml.safe_dump(data, sort_keys=False))


def forecast_libraries(pid: int) -> list[str]:
    """numpy/scikit-learn/scipy files mapped into ``pid`` (every imported extension is one)."""
    with open(f"/proc/{pid}/maps", encoding="utf-8") as handle:
        paths = {line.split(None, 5)[5].strip() for line in handle if len(line.split(None, 5)) == 6}
    return sorted(p for p in paths if any(part in p for part in FORECAST_LIBS))


class Sampler:
    """RSS of a process every ``every`` seconds, in a thread, with the time of each sample."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), common.rss_mib(self.pid)))
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def peak(self, since: float = 0.0, until: float = float("inf")) -> float | None:
        values = [rss for t, rss in self.samples if since <= t <= until]
        return round(max(values), 1) if values else None


def wait_model(port: int, deadline: float) -> dict[str, Any]:
    """Poll /ui/power until it carries the model's scores (bounded)."""
    url = f"http://127.0.0.1:{port}/ui/power?span=21600"
    while time.monotonic() < deadline:
        body = json.loads(common.http_get(url))
        if body.get("model") and body["model"].get("mae") is not None:
            return body
        time.sleep(0.1)
    raise RuntimeError("no model in /ui/power in time")


def run_off(workdir: str) -> dict[str, Any]:
    server = common.start_meteremu(workdir, demo_config(workdir, forecasting=False), "forecast-off")
    try:
        common.http_get(f"http://127.0.0.1:{server.port}/ui/power?span=86400")
        time.sleep(3.0)  # settle
        return {"rss_mib": round(common.rss_mib(server.pid), 1),
                "memory_mib": {k: round(v, 1) for k, v in common.memory_mib(server.pid).items()},
                "forecast_libraries_mapped": forecast_libraries(server.pid),
                "serving_s": round((server.ready_at or 0) - server.started, 2)}
    finally:
        server.stop()


def run_demo(workdir: str, name: str) -> dict[str, Any]:
    config = demo_config(workdir)
    server = common.start_process(name, [common.TWISTD, *common.RUN, "--config", config], workdir)
    sampler = Sampler(server.pid)
    out: dict[str, Any] = {}
    try:
        deadline = server.started + TIMEOUT
        port = int(server.wait_line(r"serving on HTTP port\(s\) (\d+)", TIMEOUT).group(1))
        out["serving_s"] = round(time.monotonic() - server.started, 2)
        done = server.wait_line(r"backfill of grid done: (\d+) of (\d+) buckets written"
                                r"|forecast for grid: loaded the model", TIMEOUT)
        backfill_end = time.monotonic()
        out["backfill_done_s"] = round(backfill_end - server.started, 2)
        planned = re.search(r"backfilling (\d+) buckets of grid", server.text())
        out["backfill_buckets"] = int(planned.group(1)) if planned else 0
        if done.group(1):
            out["backfill_buckets"] = int(done.group(1))
        body = wait_model(port, deadline)
        out["model_shown_s"] = round(time.monotonic() - server.started, 2)
        trained = re.search(r"forecast for grid trained on (\d+) samples", server.text())
        out["trained"] = trained is not None
        out["trained_samples"] = int(trained.group(1)) if trained else None
        out["loaded_saved_model"] = "loaded the model trained" in server.text()
        model = body["model"]
        out["scores"] = {"mae": model["mae"], "persistence_mae": body["baselines"]["persistence"]["mae"],
                         "skill": body["skill"]}
        out["history_parts"] = [(p["source"], p["points"]) for p in body.get("history_parts", [])]
        time.sleep(2.0)
        sampler.stop()
        out["rss_peak_backfill_mib"] = sampler.peak(until=backfill_end)
        out["rss_peak_mib"] = sampler.peak()
        out["rss_after_mib"] = round(common.rss_mib(server.pid), 1)
        db = os.path.join(workdir, "state.db")
        out["state_db_mib"] = round(sum(os.path.getsize(p) for p in (db, db + "-wal")
                                        if os.path.exists(p)) / 2**20, 1)
    finally:
        sampler.stop()
        server.stop()
    return out


BACKFILL_ALONE = """
import json, os, resource, sys, time
import meteremu.reactor
meteremu.reactor.install()
from twisted.internet import reactor
from meteremu.forecast.backfill import Backfiller
from meteremu.forecast.dataset import SCHEMA
from meteremu.past import Past
from meteremu.sources.simulator import BACKFILL_LABEL, Household, SimulatorOptions
from meteremu.store import Store

store = Store(os.path.join(sys.argv[1], "state.db"), 30.0, clock=reactor)
store.startService()
end = time.time()
past = Past(end - 14 * 86400, end, Household(SimulatorOptions(seed=1)).power_at, BACKFILL_LABEL)
out = {}
gaps = []

def beat(last=[None]):
    now = time.monotonic()
    if last[0] is not None:
        gaps.append(now - last[0])
    last[0] = now
    if reactor.running:
        reactor.callLater(0.01, beat)

async def run():
    await store.run_interaction(lambda txn: txn.execute(SCHEMA))
    out["rss_before_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall, cpu = time.monotonic(), time.process_time()
    beat()
    out["buckets"] = await Backfiller("grid", past, store, reactor, 10.0, 14 * 86400).start()
    out["wall_s"] = round(time.monotonic() - wall, 2)
    out["cpu_s"] = round(time.process_time() - cpu, 2)
    out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["longest_reactor_gap_ms"] = round(1000 * max(gaps), 1)
    out["numpy_loaded"] = "numpy" in sys.modules

from twisted.internet.defer import ensureDeferred
def main():
    d = ensureDeferred(run())
    d.addBoth(lambda r: (store.stopService(), r)[1]).addBoth(lambda r: (reactor.stop(), r)[1])
    d.addErrback(lambda f: out.setdefault("error", str(f)))
reactor.callWhenRunning(main)
reactor.run()
print(json.dumps(out))
"""


def backfill_alone(workdir: str) -> dict[str, Any]:
    """14 days at 10 s into a fresh store, in a process of its own (no numpy): time, RSS, reactor gaps."""
    os.makedirs(workdir, exist_ok=True)
    return common.run_json([sys.executable, "-c", BACKFILL_ALONE, workdir], timeout=TIMEOUT,
                           core=common.SERVER_CORE)


def measure() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meteremu-firststart-") as tmp:
        results = {"machine": common.machine(), "off": run_off(os.path.join(tmp, "off")),
                   "backfill": backfill_alone(os.path.join(tmp, "backfill"))}
        demo = os.path.join(tmp, "demo")
        results["first"] = run_demo(demo, "first-start")
        results["restart"] = run_demo(demo, "restart")
    return results


def section(results: dict[str, Any]) -> str:
    """The markdown section for docs/performance.md."""
    off, first, again = results["off"], results["first"], results["restart"]
    bf = results["backfill"]
    libs = off["forecast_libraries_mapped"]
    lines = [
        "## The first start (`bench/firststart.py`)",
        "",
        "`etc/meteremu.yaml` as shipped: forecasting on, the simulator backfilling 14 days of its own "
        "household (computed, not measured, and labelled so on the dashboard). Times are seconds from "
        "spawning twistd, on 127.0.0.1.",
        "",
        "| What | First start | Restart (same state) |",
        "|------|-------------|----------------------|",
        f"| Serving (HTTP answers) | {first['serving_s']} s | {again['serving_s']} s |",
        f"| Backfill written | {first['backfill_buckets']:,} buckets by {first['backfill_done_s']} s "
        f"| {again['backfill_buckets']:,} buckets (only what was missing) |",
        f"| Forecast and scores in `/ui/power` | {first['model_shown_s']} s "
        f"({'trained on ' + format(first['trained_samples'], ',') + ' samples' if first['trained'] else 'loaded'}) "
        f"| {again['model_shown_s']} s ({'saved model loaded' if again['loaded_saved_model'] else 'trained'}) |",
        f"| Model MAE / persistence MAE / skill | {first['scores']['mae']} W / "
        f"{first['scores']['persistence_mae']} W / {first['scores']['skill']} | "
        f"{again['scores']['mae']} W / {again['scores']['persistence_mae']} W / {again['scores']['skill']} |",
        f"| RSS peak while backfilling | {first['rss_peak_backfill_mib']} MiB | "
        f"{again['rss_peak_backfill_mib']} MiB |",
        f"| RSS peak / after | {first['rss_peak_mib']} / {first['rss_after_mib']} MiB | "
        f"{again['rss_peak_mib']} / {again['rss_after_mib']} MiB |",
        f"| State file (14 days at 10 s) | {first['state_db_mib']} MiB | {again['state_db_mib']} MiB |",
        "",
        f"The backfill alone (14 days at 10 s into a fresh store, a process of its own without numpy): "
        f"{bf['buckets']:,} buckets in {bf['wall_s']} s wall, {bf['cpu_s']} s CPU; peak RSS "
        f"{bf['max_rss_mib']:.0f} MiB ({bf['rss_before_mib']:.0f} MiB before it); the reactor never waited "
        f"more than {bf['longest_reactor_gap_ms']} ms between two turns.",
        "",
        f"With forecasting off (same config, `forecast.enabled: false`, no backfill) the service's RSS is "
        f"{off['rss_mib']} MiB and {len(libs)} numpy/scikit-learn/scipy files are mapped into it"
        + (": installing them by default does not change its memory." if not libs else f": {', '.join(libs[:5])}."),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    results = measure()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    print(section(results))


if __name__ == "__main__":
    main()
