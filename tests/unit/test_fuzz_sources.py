"""Fuzzing the upstream parsers and source entry points (issue item 7).

Every pure parser of the sources, and the synchronous entry points that feed
them (``P1Decoder.feed``, the Home Assistant and HomeWizard ``ws_message``
handlers driven on a ``Clock``, the Envoy client's ``_json`` + parser
pipeline), is run with hypothesis on

* arbitrary bytes, text and JSON of any shape (``tests/support/fuzz.py``);
* structure-aware mutations of the real captures in ``tests/fixtures/``
  (``tests/support/fuzz_sources.py``): fields dropped, replaced, retyped,
  duplicated and nested deep; ``NaN``/``Infinity``/``1e999``/4301-digit
  number texts in number positions; truncated and spliced bodies; P1
  telegrams with garbage lines, odd values and units, wrong or recomputed
  CRCs; KMP frames with any register payload, stuffed and CRC'd.

Property: the parser returns a value or raises its module's own documented
error (``EnvoyParseError``/``NoGridData``/``MissingSample``, ``ValueError``
for HomeWizard and ``parse_frame``, ``SampleError`` for ``convert``,
``KmpError``; ``P1Decoder.feed`` and the ``ws_message`` handlers never
raise), every Reading (and Envoy ``GridSample``) it produces holds finite
numbers only, no case takes more than 2 s (the sizes are bounded, so a slow
case is a near-hang), and a decoder is not spoiled by a bad input (the next
good telegram/frame decodes as on a fresh decoder).

Each target collects its problems instead of stopping at the first case, logs
``fuzz: <target>: <N> cases`` (``METEREMU_FUZZ_SCALE`` multiplies N), then
fails with every distinct problem and its shortest input. ``test_bug_*`` pin
the product bugs found, one input each.
"""

from __future__ import annotations

from decimal import Decimal

from twisted.trial.unittest import SynchronousTestCase

from meteremu.sources.dsmr.parse import Accepted, P1Decoder, crc16
from meteremu.sources.homewizard.parse import parse_measurement
from meteremu.sources.kamstrup import kmp
from meteremu.sources.kamstrup.parse import register_extras
from tests.support import fuzz_sources as fs
from tests.support.fuzz_sources import Problems, reading_problems
from tests.support.shared.fuzz_sources import ARRIVAL, HW_V1, KMP_REGISTERS


class DecimalSanityTests(SynchronousTestCase):
    """The helpers above agree with the product on a good input (guards the oracles)."""

    def test_fixtures_pass_every_check(self) -> None:
        problems = Problems("sanity")
        for name in fs.DSMR_NAMES:
            results = P1Decoder().feed(fs.dsmr_telegram(name), ARRIVAL)
            self.assertIsInstance(results[-1], Accepted, name)
            self.assertEqual(reading_problems(results[-1].reading), [], name)
        self.assertEqual(reading_problems(parse_measurement(HW_V1, "v1", ARRIVAL).reading), [])
        data = kmp.encode_registers([(0x3C, 0x02, Decimal("1234.5")), (0x50, 0x17, 12)])
        self.assertEqual(register_extras(kmp.decode_registers(data), KMP_REGISTERS),
                         {"heat_energy_kwh": 1234.5, "heat_power_w": 12_000_000.0})
        self.assertFalse(problems)
        self.assertEqual(crc16(b"123456789"), 0xBB3D)  # CRC-16/ARC check value
