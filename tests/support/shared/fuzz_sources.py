"""What the unit and integration tests of fuzz_sources share (helpers, data)."""

from __future__ import annotations

from meteremu.sources.kamstrup.parse import REGISTERS, Register
from tests.support import fuzz_sources as fs

ARRIVAL = 1_750_000_000.0


HW_V1, HW_V2 = fs.homewizard_docs()


KMP_REGISTERS = [*REGISTERS.values(), Register(0x1234, "?", "register_1234")]
