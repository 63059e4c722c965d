"""What a scenario is: a household, batteries, a meter and how meteremu is set up (pure data)."""

from __future__ import annotations

from dataclasses import dataclass, field

from meteremu.lab.battery import BatterySpec
from meteremu.lab.household import HouseholdSpec


@dataclass(frozen=True)
class MeterSpec:
    """The real meter and the way its values travel to meteremu.

    A sample of the true grid is taken every ``interval`` s and delivered
    after a uniform ``latency`` (in order, as over one TCP connection: a
    late sample holds back the ones after it); with probability ``spikes``
    a sample is ``spike_delay`` s later still. During an ``outage``
    (start as a fraction of the run, length in s) nothing is published.
    ``loss`` is the probability that a battery's poll, and separately its
    answer, is lost.
    """

    interval: float = 1.0
    latency: tuple[float, float] = (0.2, 0.5)
    spikes: float = 0.0
    spike_delay: float = 3.0
    outages: tuple[tuple[float, float], ...] = ()
    loss: float = 0.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration: float  # s
    household: HouseholdSpec
    batteries: tuple[BatterySpec, ...]
    meter: MeterSpec = field(default_factory=MeterSpec)
    on_stale: str | float = "error"
    expire_after: float = 0.0  # the MQTT source's expire_after; an outage is seen only with it
    tags: tuple[str, ...] = ()
