"""One emulated Shelly: identity + the meter it serves + its stale policy.

Holds the little live state the RPC methods need (start time, ports) and
decides what reading a client is served, applying the device's ``on_stale``
policy (design.md §4) in one place for every transport. No sockets here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meteremu.devices.shelly.clients import ClientTracker
from meteremu.devices.shelly.identity import Identity
from meteremu.devices.shelly.options import FallbackPolicy, Options
from meteremu.devices.shelly.rpc import UNAVAILABLE, CallContext, RpcCore, RpcError
from meteremu.meter import Freshness, IClock, Meter
from meteremu.reading import PhaseReading, Reading

THERMAL_ZONE = "/sys/class/thermal/thermal_zone0/temp"


def host_temperature(path: str = THERMAL_ZONE) -> float | None:
    """The host's SoC temperature (a Pi has one), or None where there is none.

    The device's ``temperature:0`` is its own board temperature; the host's is
    the honest equivalent, and None is served rather than an invented value.
    """
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip()) / 1000.0
    except (OSError, ValueError):
        return None


class ShellyDevice:
    """State and policy of one emulated Pro 3EM."""

    def __init__(
        self,
        options: Options,
        identity: Identity,
        meter: Meter,
        clock: IClock,
        *,
        udp_ports: tuple[int, ...] = (),
        modbus: bool = False,
        tz: str | None = None,
        temperature: Callable[[], float | None] = host_temperature,
    ) -> None:
        from meteremu.devices.shelly.methods import build_methods

        self.options = options
        self.identity = identity
        self.meter = meter
        self.clock = clock
        self.udp_ports = udp_ports
        self.modbus = modbus
        self.tz = tz
        self.temperature = temperature
        self.started_at = clock.seconds()
        self.cfg_rev = 1
        self.meter_components: Callable[[CallContext], dict[str, Any]]  # set by build_methods
        self.full_status: Callable[[CallContext], dict[str, Any]]
        self.clients = ClientTracker(clock, options.scaling)
        self.scale_for: Callable[[CallContext], float] = self.clients.scale_for
        self.core = RpcCore(lambda: self.identity.device_id, build_methods(self))
        self.core.observers.append(self.clients.observe)

    @property
    def monophase(self) -> bool:
        return self.identity.profile == "monophase"

    def serving_reading(self) -> Reading:
        """The reading clients are served now, or RpcError(-114) per policy.

        Fresh: the latest reading. Stale or down: ``hold`` keeps the last
        reading, ``fallback`` serves the configured watts on phase A, and
        ``error`` (the default) refuses, so a battery falls back to its own
        safe mode instead of regulating on old numbers.
        """
        meter = self.meter
        state = meter.freshness()
        if state is Freshness.FRESH and meter.latest is not None:
            return meter.latest
        policy = self.options.on_stale
        if policy == "hold" and meter.latest is not None:
            return meter.latest
        if isinstance(policy, FallbackPolicy):
            voltage = meter.latest.phase(0).voltage if meter.latest else 230.0
            phase = PhaseReading.from_power(policy.fallback, voltage=voltage or 230.0)
            zero = PhaseReading.from_power(0.0, voltage=voltage or 230.0)
            return Reading(phases=(phase, zero, zero), measured_at=self.clock.seconds())
        reason = f": {meter.down_reason}" if state is Freshness.DOWN and meter.down_reason else ""
        raise RpcError(UNAVAILABLE, f"Meter '{meter.name}' is {state.value}{reason}")
