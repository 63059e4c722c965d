"""The Shelly RPC core and status builders, pure (no sockets).

Shape tests compare every method's result with the real Pro 3EM captures in
tests/fixtures/shelly/ (keys and JSON types); conformance numbers refer to
specs/shelly.md §9.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support import make_device


class ImportShapeTests(SynchronousTestCase):
    def test_the_method_table_does_not_import_the_device(self) -> None:
        """device.py builds its table from methods.py; methods.py never reaches back."""
        import subprocess
        import sys

        code = ("import sys; import meteremu.devices.shelly.methods; "
                "print('meteremu.devices.shelly.device' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "False")

    def test_the_device_has_its_views_as_methods(self) -> None:
        """Nothing sets the views on the device from outside (they are class attributes)."""
        from meteremu.devices.shelly.device import ShellyDevice

        device = make_device(Clock())
        for name in ("meter_components", "components_at", "full_status", "full_config"):
            self.assertTrue(callable(getattr(ShellyDevice, name, None)), name)
            self.assertNotIn(name, vars(device))
