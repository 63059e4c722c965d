"""The ``on_stale`` policy shared by the faces that are not Shelly RPC devices.

A face must never serve old numbers as if they were current: a battery that
regulates on a frozen reading overshoots. Each face chooses how a refusal
looks on its wire (an HTTP 503, a datagram not sent); what is served is
decided here, the same way as on the Shelly face
(:meth:`meteremu.devices.shelly.device.ShellyDevice.serving_reading`):

* fresh: the latest reading;
* ``hold``: the last reading while stale or down;
* ``{fallback: W}``: W on phase 1 (0 on the others) while stale or down;
* ``error`` (the default): :class:`Unavailable`, with the meter's reason.
"""

from __future__ import annotations

from typing import Literal

from meteremu.clocks import wall
from meteremu.devices.shelly.options import FallbackPolicy
from meteremu.meter import Freshness, IClock, Meter
from meteremu.reading import PhaseReading, Reading

StalePolicy = Literal["error", "hold"] | FallbackPolicy


class Unavailable(Exception):
    """Nothing may be served now; the message says why (for the client and the log)."""


def serving_reading(meter: Meter, policy: StalePolicy, clock: IClock) -> Reading:
    """The reading a client is served now under ``policy``, or :class:`Unavailable`."""
    state = meter.freshness()
    if state is Freshness.FRESH and meter.latest is not None:
        return meter.latest
    if policy == "hold" and meter.latest is not None:
        return meter.latest
    if isinstance(policy, FallbackPolicy):
        voltage = (meter.latest.phase(0).voltage if meter.latest else 0.0) or 230.0
        zero = PhaseReading.from_power(0.0, voltage=voltage)
        return Reading(phases=(PhaseReading.from_power(policy.fallback, voltage=voltage), zero, zero),
                       measured_at=wall(clock))
    reason = f": {meter.down_reason}" if state is Freshness.DOWN and meter.down_reason else ""
    if meter.latest is None and state is Freshness.FRESH:
        raise Unavailable(f"Meter '{meter.name}' has no reading yet")
    raise Unavailable(f"Meter '{meter.name}' is {state.value}{reason}")
