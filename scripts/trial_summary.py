"""Turn trial's closing line into ``N passed, N failed`` (CI reads that line).

trial ends with ``PASSED (successes=17)`` or
``FAILED (skips=1, failures=1, errors=1, successes=15)``; zero counters are
left out. Exit status 1 when nothing ran or something failed.
"""

from __future__ import annotations

import re
import sys


def summarise(text: str) -> tuple[int, int, int]:
    """``(passed, failed, skipped)`` from trial's output."""
    matches = list(re.finditer(r"^(PASSED|FAILED)(?: \((.*)\))?$", text, re.MULTILINE))
    if not matches:
        raise ValueError("no trial summary line found")
    match = matches[-1]
    counts = dict.fromkeys(("successes", "failures", "errors", "unexpectedSuccesses", "skips", "expectedFailures"), 0)
    for part in (match.group(2) or "").split(", "):
        if "=" in part:
            key, value = part.split("=")
            counts[key.strip()] = int(value)
    failed = counts["failures"] + counts["errors"] + counts["unexpectedSuccesses"]
    return counts["successes"], failed, counts["skips"]


def main(path: str) -> int:
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    try:
        passed, failed, skipped = summarise(text)
    except ValueError as exc:
        print(f"0 passed, 1 failed ({exc})")
        return 1
    line = f"{passed} passed, {failed} failed"
    if skipped:
        line += f", {skipped} skipped"
    print(line)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
