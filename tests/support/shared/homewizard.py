"""What the unit and integration tests of homewizard share (helpers, data)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

AMS = ZoneInfo("Europe/Amsterdam")
