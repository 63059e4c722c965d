"""One emulated Shelly: identity + the meter it serves + its stale policy.

Holds the little live state the RPC methods need (start time, ports) and
decides what reading a client is served, applying the device's ``on_stale``
policy (design.md §4) in one place for every transport. No sockets here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meteremu.devices.shelly import status as st
from meteremu.devices.shelly.clients import ClientTracker
from meteremu.devices.shelly.identity import Identity
from meteremu.devices.shelly.jsonfmt import Encoded
from meteremu.devices.shelly.options import FallbackPolicy, Options
from meteremu.devices.shelly.rpc import UNAVAILABLE, CallContext, RpcCore, RpcError
from meteremu.meter import Freshness, IClock, Meter
from meteremu.reading import PhaseReading, Reading

# Distinct cached results per reading (scales x shapes): a handful in practice
# (one scale per weighted battery); the bound only guards against odd configs.
MAX_CACHED = 64
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
        self.components_at: Callable[[float], dict[str, Any]]
        self.full_status: Callable[[CallContext], dict[str, Any]]
        self.clients = ClientTracker(clock, options.scaling)
        self.scale_for: Callable[[CallContext], float] = self.clients.scale_for
        self.core = RpcCore(lambda: self.identity.device_id, build_methods(self))
        self.core.observers.append(self.clients.observe)
        self._cached_reading: Reading | None = None
        self._cache: dict[tuple[Any, ...], Encoded] = {}

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

    # -- cached results ---------------------------------------------------------------
    def em_result(self, reading: Reading, scale: float, minimal: bool = False) -> Encoded:
        """``EM.GetStatus`` of ``reading`` at ``scale``, built and encoded once.

        Batteries poll several times a second, each poll needs the same
        answer until the next reading arrives: the result and its JSON text
        are kept per (reading, scale, shape) and dropped when the reading
        changes. Only the frame around it (id, src, dst) is per request.
        """
        key = ("em", scale, minimal)
        hit = self._cached(reading, key)
        if hit is None:
            result = st.em_status(reading, scale)
            hit = self._store(key, st.minimal_em_status(result) if minimal else result)
        return hit

    def em1_result(self, reading: Reading, index: int, scale: float, minimal: bool = False) -> Encoded:
        """``EM1.GetStatus`` of channel ``index``, cached as :meth:`em_result`."""
        key = ("em1", index, scale, minimal)
        hit = self._cached(reading, key)
        if hit is None:
            result = st.em1_status(reading, index, scale)
            if minimal:
                result = {"id": result["id"], "act_power": result["act_power"]}
            hit = self._store(key, result)
        return hit

    def _cached(self, reading: Reading, key: tuple[Any, ...]) -> Encoded | None:
        if reading is not self._cached_reading:
            self._cached_reading = reading
            self._cache.clear()
            return None
        return self._cache.get(key)

    def _store(self, key: tuple[Any, ...], result: dict[str, Any]) -> Encoded:
        encoded = Encoded(result)
        if len(self._cache) < MAX_CACHED:
            self._cache[key] = encoded
        return encoded
