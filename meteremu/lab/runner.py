"""Runs scenarios × seeds on the simulated clock, on every core, and gathers the results.

A run's result is plain JSON-able data (metrics, a per-battery summary and,
for the first seed only, a thinned trace for the report's plots). Results
hold no time of day, host name or timing: the same scenarios, seeds and
setup give byte-identical ``results`` (the ``meta`` block beside them says
when, where and how fast).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TextIO

from meteremu.hostinfo import cpu_model, git_commit
from meteremu.lab import catalogue
from meteremu.lab.loop import Loop
from meteremu.lab.meterpath import DeviceSetup
from meteremu.lab.metrics import METRICS, run_summary, score
from meteremu.lab.scenario import Scenario
from meteremu.lab.stats import bootstrap

FORMAT = "meteremu-lab/1"
PLOT_POINTS = 1800
# Multi-battery modes: the Shelly face with request-side scaling (none, divide,
# weights) or active control (control); the CT002 face relaying like a real CT
# (ct002_relay) or with active control (ct002).
SCALINGS = ("none", "divide", "weights", "control", "ct002", "ct002_relay")


def setup_for(scenario: Scenario, scaling: str) -> DeviceSetup:
    """meteremu's setup for a scenario: its stale policy, the face and weights by discharge limit.

    Weights (for ``weights`` and the control modes) are by each battery's
    discharge limit, keyed by its IP on the Shelly face and its MAC on the CT.
    """
    specs = [b.resolved() for b in scenario.batteries]
    total = sum(s.max_discharge or 0.0 for s in specs) or 1.0
    ct = scaling.startswith("ct002")
    weights: tuple[tuple[str, float], ...] = ()
    if scaling in ("weights", "control", "ct002"):
        weights = tuple((f"02AB0000{i:04X}" if ct else f"127.0.0.{11 + i}",
                         round((s.max_discharge or 0.0) / total, 4)) for i, s in enumerate(specs))
    return DeviceSetup(on_stale=scenario.on_stale, scaling=scaling if scaling in ("none", "divide", "weights") else "none",
                       weights=weights, expire_after=scenario.expire_after, face="ct002" if ct else "shelly",
                       control=scaling in ("control", "ct002"))


def thin(loop: Loop, points: int = PLOT_POINTS) -> dict[str, Any]:
    """The run's trace, every n-th point (never averaged: hunting must stay visible)."""
    trace = loop.trace
    step = max(1, len(trace.t) // points)

    def pick(values: Sequence[float | None]) -> list[float | None]:
        return [None if v is None else round(v, 1) for v in values[::step]]

    return {"t": [round(v, 1) for v in trace.t[::step]], "grid": pick(trace.grid),
            "published": pick(trace.published),
            "batteries": [{"label": f"{b.spec.model} #{b.index + 1} ({b.spec.transport}, {b.ip})",
                           "power": pick(trace.power[i]), "setpoint": pick(trace.setpoint[i]),
                           "served": pick(trace.served[i])} for i, b in enumerate(loop.batteries)],
            "events": [[round(t, 1), label] for t, label in loop.household.events]}


def run_one(name: str, seed: int, scaling: str, with_trace: bool) -> dict[str, Any]:
    """One scenario, one seed, on the simulated clock (runs in a worker process)."""
    from meteremu.lab.sim import Simulation

    scenario = catalogue.get(name)
    started = time.process_time()
    loop = Simulation(scenario, seed, setup_for(scenario, scaling)).run()
    out = result_of(name, seed, loop, with_trace)
    out["cpu_s"] = time.process_time() - started
    return out


def result_of(name: str, seed: int, loop: Loop, with_trace: bool) -> dict[str, Any]:
    """A finished run as results data (either clock)."""
    out: dict[str, Any] = {"scenario": name, "seed": seed,
                           "metrics": {k: round(v, 4) for k, v in score(loop).items()}}
    out.update(run_summary(loop))
    if with_trace:
        out["trace"] = thin(loop)
    return out


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Per metric: ``[mean, low, high]`` over the runs' seeds (95 % bootstrap)."""
    return {k: [round(v, 4) for v in bootstrap([r["metrics"][k] for r in runs])] for k in METRICS}


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


class Progress:
    """One line on stderr, rewritten in place on a terminal, every 10 % otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.tty = self.stream.isatty()
        self._said = -1

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        line = f"[{self.done:>{len(str(self.total))}}/{self.total}] {what}  {elapsed:.0f} s, ~{eta:.0f} s left"
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if self.done == self.total else ""))
        else:
            decile = self.done * 10 // self.total
            if decile == self._said:
                return
            self._said = decile
            self.stream.write(line + "\n")
        self.stream.flush()


def run_many(names: Sequence[str], seeds: Sequence[int], scaling: str, jobs: int = 0,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every scenario × seed; ``jobs`` worker processes (0: one per core)."""
    tasks = [(name, seed, scaling, seed == seeds[0]) for name in names for seed in seeds]
    jobs = jobs or os.cpu_count() or 1
    started, cpu = time.monotonic(), 0.0
    results: dict[tuple[str, int], dict[str, Any]] = {}
    if jobs == 1:
        for task in tasks:
            results[(task[0], task[1])] = run_one(*task)
            if progress:
                progress(f"{task[0]} seed {task[1]}")
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(run_one, *task): task for task in tasks}
            from concurrent.futures import as_completed

            for future in as_completed(futures):
                task = futures[future]
                results[(task[0], task[1])] = future.result()
                if progress:
                    progress(f"{task[0]} seed {task[1]}")
    for run in results.values():
        cpu += run.pop("cpu_s", 0.0)
    out = assemble(names, seeds, results, scaling, "simulated")
    out["meta"].update(jobs=jobs, wall_s=round(time.monotonic() - started, 2), cpu_s=round(cpu, 2))
    return out


def assemble(names: Sequence[str], seeds: Sequence[int], results: dict[tuple[str, int], dict[str, Any]],
             scaling: str, clock: str) -> dict[str, Any]:
    """The results file of finished runs (``results[(name, seed)]`` from :func:`result_of`)."""
    scenarios: dict[str, Any] = {}
    for name in names:
        scenario = catalogue.get(name)
        runs = [results[(name, seed)] for seed in seeds]
        trace = runs[0].pop("trace", None)
        scenarios[name] = {"description": scenario.description, "duration_s": scenario.duration,
                           "batteries": [b.model for b in scenario.batteries], "summary": summarise(runs),
                           "runs": runs, "trace": trace}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(), "machine": machine()}
    return {"format": FORMAT, "clock": clock, "scaling": scaling, "seeds": list(seeds),
            "results": scenarios, "meta": meta}


class MergeError(ValueError):
    """Results files that cannot be one: another mode, clock or format, or a seed twice."""


def merge(files: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One results file from runs of one mode and clock on different seeds.

    For seeds run one invocation at a time, e.g. each against a freshly
    started peer that would otherwise carry its state from one seed into the
    next. Runs are kept as they are; each scenario's summary is computed again
    over all its seeds; its trace is the lowest seed's. ``meta`` lists what the
    files had: dates as a range, commits, machines and emulators joined.
    """
    if not files:
        raise MergeError("nothing to merge")
    first = files[0]
    for other in files[1:]:
        for key in ("format", "clock", "scaling"):
            if other.get(key) != first.get(key):
                raise MergeError(f"cannot merge: {key} {first.get(key)!r} and {other.get(key)!r}")
    scenarios: dict[str, Any] = {}
    lowest: dict[str, int] = {}
    for results in files:
        for name, entry in results["results"].items():
            merged = scenarios.setdefault(name, {k: v for k, v in entry.items() if k not in ("runs", "summary")})
            runs = merged.setdefault("runs", [])
            seen = {run["seed"] for run in runs}
            for run in entry["runs"]:
                if run["seed"] in seen:
                    raise MergeError(f"cannot merge: {name} seed {run['seed']} is in two files")
                runs.append(run)
            low = min(run["seed"] for run in entry["runs"])
            if entry.get("trace") is not None and low < lowest.get(name, low + 1):
                merged["trace"], lowest[name] = entry["trace"], low
    for entry in scenarios.values():
        entry["runs"].sort(key=lambda run: run["seed"])
        entry["summary"] = summarise(entry["runs"])
    metas = [results.get("meta", {}) for results in files]

    def joined(key: str) -> str:
        return "; ".join(dict.fromkeys(str(m[key]) for m in metas if key in m))
    dates = sorted(str(m.get("date", "?")) for m in metas)
    meta = {"date": dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}",
            "commit": ", ".join(dict.fromkeys(str(m.get("commit", "?")) for m in metas)),
            "machine": joined("machine"), "merged": len(files)}
    for key in ("emulator", "feed"):
        if joined(key):
            meta[key] = joined(key)
    seeds = sorted({run["seed"] for entry in scenarios.values() for run in entry["runs"]})
    return {"format": first.get("format"), "clock": first.get("clock"), "scaling": first.get("scaling"),
            "seeds": seeds, "results": scenarios, "meta": meta}
