"""What the unit and integration tests of dsmr share (helpers, data)."""

from __future__ import annotations

KEY = bytes(range(16))


AUTH = bytes(range(16, 32))
