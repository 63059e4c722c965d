"""Type-check ``meteremu/`` against a committed baseline that may only shrink.

``mypy`` runs with the project's settings (``[tool.mypy]`` in pyproject.toml,
the zope plugin included). Each error is keyed by file, error code and
message, without its line number (so moving code does not churn the
baseline), and counted. The check fails when

* an error appears that the baseline does not hold (new code must type-check), or
* the baseline holds errors that are gone (the baseline is shrunk with
  ``--shrink``, which only ever removes entries: it can never grow).

``--init`` writes the first baseline; it refuses when one exists.

Usage: python scripts/mypy_baseline.py [--shrink | --init] [--baseline FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(ROOT, "mypy-baseline.txt")
ERROR = re.compile(r"^(?P<file>[^:]+):\d+(?::\d+)?: error: (?P<message>.*?)(?:  \[(?P<code>[\w-]+)\])?$")


def parse(output: str) -> Counter[str]:
    """mypy's output → ``Counter`` of ``file: [code] message`` keys (notes are dropped)."""
    keys: Counter[str] = Counter()
    for line in output.splitlines():
        match = ERROR.match(line.strip())
        if match:
            keys[f"{match['file']}: [{match['code'] or 'misc'}] {match['message']}"] += 1
    return keys


def read(path: str) -> Counter[str]:
    keys: Counter[str] = Counter()
    if not os.path.exists(path):
        return keys
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                count, _, key = line.partition(" ")
                keys[key] += int(count)
    return keys


def write(path: str, keys: Counter[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("# mypy errors tolerated in meteremu/ (count, file, [code] message).\n"
                     "# Written by scripts/mypy_baseline.py; it may only shrink (--shrink).\n")
        for key in sorted(keys):
            handle.write(f"{keys[key]} {key}\n")


def run_mypy() -> str:
    result = subprocess.run([sys.executable, "-m", "mypy", "meteremu"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    if result.returncode not in (0, 1) or "error: " not in result.stdout and result.returncode:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit("mypy did not run")
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shrink", action="store_true", help="drop the entries that no longer occur")
    parser.add_argument("--init", action="store_true", help="write the first baseline")
    parser.add_argument("--baseline", default=BASELINE)
    args = parser.parse_args(argv)
    current = parse(run_mypy())
    baseline = read(args.baseline)
    if args.init:
        if os.path.exists(args.baseline):
            print(f"{args.baseline} exists: it may only shrink (--shrink)")
            return 1
        write(args.baseline, current)
        print(f"baseline written: {sum(current.values())} errors")
        return 0
    new = current - baseline
    gone = baseline - current
    if args.shrink:
        write(args.baseline, baseline & current)
        print(f"baseline shrunk by {sum(gone.values())} to {sum((baseline & current).values())} errors")
        return 1 if new else 0
    for key in sorted(new):
        print(f"mypy: new error ({new[key]}x): {key}")
    if gone:
        print(f"mypy: {sum(gone.values())} baselined errors are fixed: run "
              f"'python scripts/mypy_baseline.py --shrink' and commit {os.path.basename(args.baseline)}")
    if not new and not gone:
        print(f"mypy: no new errors ({sum(current.values())} baselined)")
    return 1 if new or gone else 0


if __name__ == "__main__":
    sys.exit(main())
