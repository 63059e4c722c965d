"""What the unit and integration tests of kamstrup share (helpers, data)."""

from __future__ import annotations


def h(text: str) -> bytes:
    return bytes.fromhex(text)
