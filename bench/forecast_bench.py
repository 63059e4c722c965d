"""Forecasting benchmark: training time and peak memory for 14 days at 10 s,
and the service's RSS with forecasting off and on.

    python bench/forecast_bench.py results.json [--days 14]

1. Data: ``days`` of the simulated household (seed 1) at 10 s, computed
   directly from the pure simulator model (no waiting for real time).
2. Training: in a fresh child process (so its peak RSS is the training's, not
   this script's), the default options (``ForecastOptions(enabled=True)``):
   wall and CPU time, RSS after importing numpy/scikit-learn, peak RSS, model
   file size, the metrics against the baselines, and the cost of one forecast.
3. Service RSS: meteremu under twistd (from this checkout, pinned to core 0,
   127.0.0.1 only) with ``forecast.enabled: false``; then ``true`` with the
   store seeded with the same days, so it trains on them at start (RSS sampled
   every 0.2 s: peak while training, after it); then restarted, reloading the
   saved model (steady state with forecasting on). Also: how long the service
   takes to exit on SIGTERM in the middle of a (long) training run.

Prints a summary and writes everything as JSON to ``argv[1]``; the numbers go
to docs/performance.md. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
from datetime import datetime
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCH)

import common  # noqa: E402  (bench/common.py)

RESOLUTION = 10.0
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
          "from twisted.scripts.twistd import run; run()"]


def generate(days: float, end: float) -> tuple[list[float], list[tuple[float, float, float, float]]]:
    """``days`` of simulated readings at 10 s ending at ``end``: timestamps and (total, a, b, c)."""
    from meteremu.sources.simulator import Household, SimulatorOptions

    house = Household(SimulatorOptions(seed=1))
    n = int(days * 86400 / RESOLUTION)
    start = end - n * RESOLUTION
    ts, rows = [], []
    for i in range(n):
        t = start + i * RESOLUTION
        r = house.reading_at(t)
        ts.append(t)
        rows.append((r.total_act_power, *(p.act_power for p in r.phases)))
    return ts, rows


# -- 2. training in a child process ---------------------------------------------------------


def train_child(data_path: str, out_path: str) -> None:
    """Child mode: import, train with the default options, report as JSON."""
    def rss() -> float:
        return common.rss_mib(os.getpid())

    started = rss()
    import numpy as np
    import sklearn  # noqa: F401  (what the trainer's thread imports)
    from sklearn.neural_network import MLPRegressor  # noqa: F401

    from meteremu.forecast import ForecastOptions
    from meteremu.forecast import model as fm

    imported = rss()
    with open(data_path, encoding="utf-8") as handle:
        data = json.load(handle)
    ts, values = np.asarray(data["ts"]), np.asarray(data["total"])
    del data
    options = ForecastOptions(enabled=True)
    progress: list[tuple[float, float]] = []
    t0, c0 = time.monotonic(), time.process_time()
    model = fm.train(ts, values, options, now=time.time(),
                     progress=lambda f: progress.append((time.monotonic() - t0, f)))
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    base = os.path.join(os.path.dirname(out_path), "bench.forecast-grid")
    fm.save(model, base)
    size = os.path.getsize(base + ".joblib")
    window = model.window
    recent_ts, recent_v = ts[-window - 10:].tolist(), values[-window - 10:].tolist()
    n = 300
    f0 = time.perf_counter()
    for _ in range(n):
        model.forecast(recent_ts, recent_v)
    forecast_ms = (time.perf_counter() - f0) / n * 1000
    meta = model.meta
    result = {
        "options": {"window": options.window, "horizon": options.horizon, "resolution": options.resolution,
                    "hidden_layers": list(options.hidden_layers), "max_iter": options.max_iter,
                    "max_samples": options.max_samples, "test_fraction": options.test_fraction},
        "samples": meta["samples"], "train_examples": meta["train_examples"],
        "test_examples": meta["test_examples"], "epochs": meta["epochs"],
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "seconds_per_epoch": round(wall / max(1, meta["epochs"]), 3),
        "rss_start_mib": round(started, 1), "rss_after_imports_mib": round(imported, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "model_file_kib": round(size / 1024, 1), "forecast_ms": round(forecast_ms, 3),
        "metrics": meta["metrics"], "skill": meta["skill"], "shrink": meta["shrink"],
        "sklearn": meta["sklearn"], "numpy": meta["numpy"],
        "progress_updates": len(progress),
        "longest_gap_between_progress_s": round(max(
            (b[0] - a[0] for a, b in zip(progress, progress[1:], strict=False)), default=0.0), 3),
    }
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


def bench_training(work: str, ts: list[float], rows: list[tuple[float, ...]]) -> dict[str, Any]:
    data = os.path.join(work, "data.json")
    with open(data, "w", encoding="utf-8") as handle:
        json.dump({"ts": ts, "total": [r[0] for r in rows]}, handle)
    out = os.path.join(work, "training.json")
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run(common.pinned(common.SERVER_CORE, [sys.executable, __file__, "--train-child", data, out]),
                   env=env, check=True, timeout=1800)
    with open(out, encoding="utf-8") as handle:
        return json.load(handle)


# -- 3. the service's RSS ------------------------------------------------------------------


def config(work: str, port: int, forecast: bool) -> str:
    start = datetime.now().astimezone().isoformat()
    text = f"""\
logging:
  level: info
server:
  host: 127.0.0.1
  http_port: {port}
meters:
  grid:
    source:
      type: simulator
      interval: 1s
      seed: 1
      start_time: "{start}"
store:
  path: {os.path.join(work, 'state.db')}
  persist_interval: 30s
devices:
  - type: shelly_pro_3em
    meter: grid
    mac: auto
    websocket: true
    udp_ports: []
    mdns: false
forecast:
  enabled: {'true' if forecast else 'false'}
"""
    return common.write_config(work, text)


def seed(path: str, ts: list[float], rows: list[tuple[float, ...]]) -> None:
    from meteremu.forecast.dataset import SCHEMA

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute(SCHEMA)
        conn.executemany("INSERT OR REPLACE INTO forecast_samples VALUES ('grid', ?, ?, ?, ?, ?, 1)",
                         [(t, *r) for t, r in zip(ts, rows, strict=True)])


def start(work: str, name: str, cfg: str) -> common.Server:
    log = os.path.join(work, f"{name}.log")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    env.update(PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        began = time.monotonic()
        proc = subprocess.Popen(common.pinned(common.SERVER_CORE, [*TWISTD, *common.RUN, "--config", cfg]),
                                stdout=out, stderr=subprocess.STDOUT, cwd=work, env=env)
    server = common.Server(name, proc, log, began)
    server.port = int(server.wait_line(r"serving on HTTP port\(s\) \[?(\d+)", timeout=60).group(1))
    return server


def power(server: common.Server) -> dict[str, Any]:
    return json.loads(common.http_get(f"http://127.0.0.1:{server.port}/ui/power", timeout=10))


def settle_rss(server: common.Server, seconds: float) -> dict[str, float]:
    time.sleep(seconds)
    return common.memory_mib(server.pid)


def bench_service(work: str, ts: list[float], rows: list[tuple[float, ...]], settle: float) -> dict[str, Any]:
    result: dict[str, Any] = {}
    port = common.free_ports(1)[0]

    off_dir = os.path.join(work, "off")
    server = start(off_dir, "off", config(off_dir, port, forecast=False))
    try:
        result["off"] = settle_rss(server, settle)
        body = power(server)
        assert body["forecasting"] is False and body["model"] is None
        result["off"]["modules"] = "numpy/sklearn not loaded (see tests.integration.test_forecast.ImportTests)"
    finally:
        server.stop()

    on_dir = os.path.join(work, "on")
    seed(os.path.join(on_dir, "state.db"), ts, rows)
    cfg = config(on_dir, port, forecast=True)
    server = start(on_dir, "on-train", cfg)
    try:
        samples: list[tuple[float, float]] = []
        began = time.monotonic()
        trained = False
        deadline = began + 1800
        while time.monotonic() < deadline:
            samples.append((time.monotonic() - began, common.rss_mib(server.pid)))
            try:
                body = power(server)
            except (urllib.error.URLError, OSError):
                body = None
            if body and body["model"] is not None and body["training"]["state"] == "idle":
                trained = True
                break
            time.sleep(0.2)
        if not trained:
            raise RuntimeError("the service did not train within 30 min")
        result["on_training"] = {
            "seconds_to_model": round(time.monotonic() - began, 1),
            "peak_rss_mib": round(max(r for _, r in samples), 1),
            "rss_before_training_mib": round(samples[0][1], 1),
            "skill": body["skill"], "model": body["model"], "baselines": body["baselines"],
        }
        result["on_after_training"] = settle_rss(server, settle)
        # the reactor stays responsive while training: /ui/power answered every poll above
        result["on_training"]["polls_answered"] = len(samples)
    finally:
        server.stop()

    # SIGTERM in the middle of fitting: the job looks at the stop flag between chunks
    stop_dir = os.path.join(work, "stop")
    seed(os.path.join(stop_dir, "state.db"), ts, rows)
    stop_cfg = config(stop_dir, port, forecast=True)
    with open(stop_cfg, "a", encoding="utf-8") as handle:
        handle.write("  max_iter: 500\n  max_samples: 100000\n")
    server = start(stop_dir, "stop", stop_cfg)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            training = power(server)["training"]
            if training["state"] == "running" and 0.1 < training["progress"] < 0.9:
                break
            time.sleep(0.1)
        began = time.monotonic()
        server.stop(timeout=60)
        result["stop_while_training"] = {"progress": training["progress"],
                                         "seconds_to_exit": round(time.monotonic() - began, 3)}
    finally:
        server.stop()

    server = start(on_dir, "on-reload", cfg)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            body = power(server)
            if body["model"] is not None and body["training"]["state"] == "idle":
                break
            time.sleep(0.2)
        result["on_reloaded"] = settle_rss(server, settle)
        result["on_reloaded"]["reloaded_model"] = body["model"] is not None and \
            "loaded the model trained" in server.text()
        result["on_reloaded"]["forecast_points"] = len(power(server)["forecast"])
    finally:
        server.stop()
    return result


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--train-child":
        train_child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="where to write the JSON results")
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait before reading RSS")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="meteremu-forecast-bench-")
    t0 = time.monotonic()
    ts, rows = generate(args.days, time.time() - 60)
    generated = time.monotonic() - t0
    print(f"data: {len(ts)} samples ({args.days:g} days at {RESOLUTION:g} s) in {generated:.1f} s", flush=True)
    training = bench_training(work, ts, rows)
    m = training["metrics"]
    print(f"training: {training['wall_s']} s wall, {training['cpu_s']} s CPU, {training['epochs']} epochs, "
          f"peak RSS {training['peak_rss_mib']} MiB (after imports {training['rss_after_imports_mib']} MiB)",
          flush=True)
    print(f"  MAE model {m['model']['mae']:.1f} W, persistence {m['persistence']['mae']:.1f} W, "
          f"seasonal naive {m['seasonal_naive']['mae']:.1f} W; skill {training['skill']:.3f}; "
          f"one forecast {training['forecast_ms']} ms", flush=True)
    service = bench_service(work, ts, rows, args.settle)
    print(f"service RSS: off {service['off']['VmRSS']:.1f} MiB; on, reloaded model "
          f"{service['on_reloaded']['VmRSS']:.1f} MiB; on, peak while training "
          f"{service['on_training']['peak_rss_mib']} MiB (model after "
          f"{service['on_training']['seconds_to_model']} s); after training "
          f"{service['on_after_training']['VmRSS']:.1f} MiB; SIGTERM while training: exit in "
          f"{service['stop_while_training']['seconds_to_exit']} s", flush=True)
    results = {"machine": common.machine(), "days": args.days, "resolution_s": RESOLUTION,
               "data_generation_s": round(generated, 1), "training": training, "service": service,
               "work_dir": work}
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
