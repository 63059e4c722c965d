"""What the unit and integration tests of confdir share (helpers, data)."""

from __future__ import annotations

import os


def write(directory: str, name: str, text: str) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
        handle.write(text)
