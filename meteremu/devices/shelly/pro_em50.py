"""The emulated Shelly Pro EM-50 (``type: shelly_pro_em50``): the Shelly core with another face.

Registered like the Pro 3EM; only the options' defaults (model, app, gen,
firmware, UDP port) and the face (meteremu.devices.shelly.faces) differ.
"""

from __future__ import annotations

from meteremu.devices.shelly import make_device, preload
from meteremu.devices.shelly.options import ProEm50Options as Options

__all__ = ["Options", "make_device", "preload"]
