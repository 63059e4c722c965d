"""SML frames from tests/fixtures/sml (hex files; whitespace ignored)."""

from __future__ import annotations

import binascii
import os

from tests.support import FIXTURES


def sml_frame(name: str) -> bytes:
    with open(os.path.join(FIXTURES, "sml", name), encoding="ascii") as handle:
        return binascii.a2b_hex("".join(handle.read().split()))
