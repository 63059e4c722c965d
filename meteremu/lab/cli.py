"""``meteremu-lab``: run, list, report, compare, merge, table, goals, bench.

Bad input (an unknown scenario, a bad ``--target``, an emulator that does not
answer) is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from meteremu.lab import catalogue
from meteremu.lab.runner import SCALINGS


class UsageError(Exception):
    """One line for the user, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parser() -> Parser:
    top = Parser(prog="meteremu-lab", description="How well batteries regulate through meteremu, closed loop.")
    sub = top.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser("list", help="the scenario catalogue")
    run = sub.add_parser("run", help="run scenarios (simulated clock unless --realtime)")
    run.add_argument("scenarios", nargs="*", help="scenario names (default: all)")
    run.add_argument("--seeds", type=int, default=10, help="how many seeds (default 10)")
    run.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    run.add_argument("--scaling", choices=SCALINGS, default="none", help="meteremu's multi-battery mode")
    run.add_argument("--jobs", type=int, default=0, help="worker processes (default: one per core)")
    run.add_argument("--out", default="lab-results", help="directory for results.json and report.html")
    run.add_argument("--realtime", action="store_true", help="real reactor, real loopback sockets")
    run.add_argument("--target", action="append", default=[],
                     help="udp://HOST:PORT or http://HOST:PORT of an emulator (with --realtime; repeatable)")
    run.add_argument("--feed", help="mqtt://HOST:PORT/TOPIC where the emulator reads the grid (with --target)")
    run.add_argument("--label", help="what was measured, kept in the results file (default: meteremu, "
                     "or the --target addresses)")
    report = sub.add_parser("report", help="render the HTML report of a results file")
    report.add_argument("results")
    report.add_argument("--out", help="HTML file (default: report.html beside the results)")
    compare = sub.add_parser("compare", help="per-metric deltas B − A with intervals")
    compare.add_argument("a")
    compare.add_argument("b")
    compare.add_argument("--changes", action="store_true", help="only the deltas beyond their intervals")
    compare.add_argument("--strict", action="store_true", help="exit 1 when a regression is flagged")
    merge = sub.add_parser("merge", help="one results file from runs of one mode on different seeds")
    merge.add_argument("results", nargs="+")
    merge.add_argument("--out", default="lab-merged", help="directory for results.json and report.html")
    table = sub.add_parser("table", help="the Markdown results table of docs/control.md")
    table.add_argument("results", nargs="+")
    goals = sub.add_parser("goals", help="the multi-battery goals table of docs/control.md (issue #16)")
    goals.add_argument("results", nargs="+", help="results files of the modes none, divide and the control modes")
    bench = sub.add_parser("bench", help="the two benchmark figures of docs/control.md")
    bench.add_argument("--seeds", type=int, default=10)
    bench.add_argument("--jobs", type=int, default=0)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return dispatch(parser().parse_args(argv))
    except UsageError as exc:
        sys.stderr.write(f"meteremu-lab: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("meteremu-lab: interrupted\n")
        return 130


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "list":
        return cmd_list()
    if args.command == "run":
        return cmd_run(args)
    if args.command == "report":
        return cmd_report(args.results, args.out)
    if args.command == "compare":
        return cmd_compare(args.a, args.b, args.changes, args.strict)
    if args.command == "merge":
        return cmd_merge(args.results, args.out)
    if args.command == "table":
        from meteremu.lab.report import markdown_header, markdown_table

        files = [_load(path) for path in args.results]
        print(markdown_header(files) + "\n\n" + markdown_table(files))
        return 0
    if args.command == "goals":
        from meteremu.lab.report import markdown_goals, markdown_header

        files = [_load(path) for path in args.results]
        print(markdown_header(files) + "\n\n" + markdown_goals(files))
        return 0
    return cmd_bench(args.seeds, args.jobs)


def cmd_list() -> int:
    for name, scenario in catalogue.CATALOGUE.items():
        models = "+".join(b.model for b in scenario.batteries)
        print(f"{name:22} {scenario.duration:6.0f} s  {models:32} {scenario.description}")
    return 0


def _names(requested: Sequence[str]) -> list[str]:
    for name in requested:
        if name not in catalogue.CATALOGUE:
            raise UsageError(f"unknown scenario {name!r} (meteremu-lab list shows them)")
    return list(requested) or list(catalogue.CATALOGUE)


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != "meteremu-lab/1":
        raise UsageError(f"{path} is not a meteremu-lab results file")
    return data


def _write(results: dict[str, Any], out: str) -> None:
    from meteremu.lab.report import render

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1, sort_keys=True)
    with open(os.path.join(out, "report.html"), "w", encoding="utf-8") as handle:
        handle.write(render(results))


def _print_summary(results: dict[str, Any]) -> None:
    keys = ("grid_rms_w", "band_crossings_per_h", "settle_mean_s", "avoidable_import_wh", "cost_regret_ct")
    print(f"{'scenario':22} " + " ".join(f"{k:>22}" for k in keys))
    for name, entry in results["results"].items():
        cells = []
        for k in keys:
            centre, low, high = entry["summary"][k]
            cells.append(f"{f'{centre:.1f} [{low:.1f},{high:.1f}]':>22}")
        print(f"{name:22} " + " ".join(cells))


def cmd_run(args: argparse.Namespace) -> int:
    names = _names(args.scenarios)
    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    if (args.target or args.feed) and not args.realtime:
        raise UsageError("--target and --feed go with --realtime")
    seeds = list(range(args.seed, args.seed + args.seeds))
    if args.realtime:
        results = _run_realtime(names, seeds, args)
    else:
        from meteremu.lab.profiles import ProfileError
        from meteremu.lab.runner import Progress, run_many

        progress = Progress(len(names) * len(seeds))
        try:
            results = run_many(names, seeds, args.scaling, args.jobs, progress.step)
        except ProfileError as exc:
            raise UsageError(str(exc)) from None
    results["meta"].update(measured(args))
    _write(results, args.out)
    _print_summary(results)
    print(f"results: {os.path.join(args.out, 'results.json')}, report: {os.path.join(args.out, 'report.html')}")
    return 0


def measured(args: argparse.Namespace) -> dict[str, str]:
    """What a run measured, for its results' ``meta``: ``emulator`` (``--label``, else meteremu or the
    targets) and, against another emulator, the ``feed`` it was given."""
    out = {"emulator": args.label or (" ".join(args.target) if args.target else "meteremu")}
    if args.feed:
        out["feed"] = args.feed
    return out


def _run_realtime(names: list[str], seeds: list[int], args: argparse.Namespace) -> dict[str, Any]:
    from meteremu.lab.realtime import RealtimeError, parse_feed, parse_target

    try:
        targets = tuple(parse_target(t) for t in args.target)
        feed = parse_feed(args.feed) if args.feed else None
        if targets and feed is None:
            raise RealtimeError("--target needs --feed mqtt://HOST:PORT/TOPIC: where the emulator reads the grid")
    except RealtimeError as exc:
        raise UsageError(str(exc)) from None
    from meteremu import reactor as meteremu_reactor

    meteremu_reactor.install()
    from twisted.internet import defer, task

    from meteremu.lab.realtime import run_realtime
    from meteremu.lab.runner import Progress, assemble, result_of, setup_for

    outcome: dict[str, Any] = {}
    progress = Progress(len(names) * len(seeds))

    @defer.inlineCallbacks
    def go(reactor: Any) -> Any:
        runs: dict[tuple[str, int], dict[str, Any]] = {}
        for name in names:
            scenario = catalogue.get(name)
            for seed in seeds:
                loop = yield run_realtime(scenario, seed, setup_for(scenario, args.scaling), reactor, targets, feed)
                runs[(name, seed)] = result_of(name, seed, loop, seed == seeds[0])
                progress.step(f"{name} seed {seed} (real time)")
        outcome["results"] = assemble(names, seeds, runs, args.scaling, "realtime")

    failure: list[str] = []

    def main(reactor: Any) -> Any:
        d = go(reactor)

        def failed(f: Any) -> None:
            if f.check(RealtimeError):
                failure.append(str(f.value))
            else:
                failure.append(f"the run failed: {f.getErrorMessage()}")
        d.addErrback(failed)
        return d

    started = time.monotonic()
    try:
        task.react(main)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise UsageError("the reactor stopped with an error") from None
    if failure:
        raise UsageError(failure[0])
    results: dict[str, Any] = outcome["results"]
    results["meta"]["wall_s"] = round(time.monotonic() - started, 2)
    return results


def cmd_report(path: str, out: str | None) -> int:
    from meteremu.lab.report import render

    results = _load(path)
    target = out or os.path.join(os.path.dirname(os.path.abspath(path)), "report.html")
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(render(results))
    print(f"report: {target}")
    return 0


def cmd_merge(paths: Sequence[str], out: str) -> int:
    from meteremu.lab.runner import MergeError, merge

    try:
        results = merge([_load(path) for path in paths])
    except MergeError as exc:
        raise UsageError(str(exc)) from None
    _write(results, out)
    _print_summary(results)
    print(f"results: {os.path.join(out, 'results.json')}, report: {os.path.join(out, 'report.html')}")
    return 0


def cmd_compare(a: str, b: str, only_changes: bool, strict: bool) -> int:
    from meteremu.lab.compare import compare, format_table
    from meteremu.lab.report import describe

    first, second = _load(a), _load(b)
    deltas = compare(first, second)
    if not deltas:
        raise UsageError(f"{a} and {b} have no scenario and seed in common")
    print(f"A: {describe(first)}\nB: {describe(second)}")
    print(format_table(deltas, only_changes))
    return 1 if strict and any(d.verdict == "REGRESSION" for d in deltas) else 0


def cmd_bench(seeds: int, jobs: int) -> int:
    """The one-hour four-battery scenario's CPU time, then the catalogue × seeds wall time."""
    from meteremu.lab.runner import Progress, run_many, run_one

    started = time.process_time()
    run_one("four_mixed", 0, "none", False)
    one = time.process_time() - started
    print(f"four_mixed (1 h, 4 batteries, simulated clock): {one:.2f} s CPU")
    names = list(catalogue.CATALOGUE)
    progress = Progress(len(names) * seeds)
    wall = time.monotonic()
    results = run_many(names, list(range(seeds)), "none", jobs, progress.step)
    print(f"catalogue ({len(names)} scenarios) x {seeds} seeds: {time.monotonic() - wall:.1f} s wall, "
          f"{results['meta']['cpu_s']:.1f} s CPU in {results['meta']['jobs']} processes")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
