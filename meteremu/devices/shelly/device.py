"""One emulated Shelly: identity + the meter it serves + its stale policy.

Holds the little live state the RPC methods need (start time, ports),
decides what reading a client is served, applying the device's ``on_stale``
policy (design.md §4) in one place for every transport, and builds the
device's composite views (``Shelly.GetStatus``/``GetConfig`` and the meter
components the notifier pushes) from the pure builders in ``status.py``.
The RPC method table (``methods.py``) is built from this object's public
views; nothing outside sets attributes on it. No sockets here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meteremu import control
from meteremu.clocks import wall
from meteremu.devices.shelly import status as st
from meteremu.devices.shelly.clients import ClientTracker
from meteremu.devices.shelly.identity import Identity
from meteremu.devices.shelly.jsonfmt import Encoded
from meteremu.devices.shelly.methods import build_methods
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
    """State, policy and views of one emulated Pro 3EM, and its RPC core.

    ``core.guards`` holds the client tracker (it may refuse a poll that comes
    too soon); observers added by the wiring (metrics) only watch.
    """

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
        client_identities: dict[str, Identity] | None = None,
    ) -> None:
        self.options = options
        self.identity = identity
        # Per listed client IP its own identity (``clients:``); everyone else sees ``identity``.
        self.client_identities = dict(client_identities or {})
        self.meter = meter
        self.clock = clock
        self.udp_ports = udp_ports
        self.modbus = modbus
        self.tz = tz
        self.temperature = temperature
        self.started_at = clock.seconds()
        self.cfg_rev = 1
        self.face = options.FACE
        # EM Gen3 / Pro EM-50: em1 channels, the first carrying the summed meter.
        self.summed = self.face.channels > 0
        self.em_ids = range(0) if self.monophase or self.summed else range(1)
        self.em1_ids = range(3) if self.monophase else range(self.face.channels)
        self.clients = ClientTracker(clock, options.scaling)
        ctl = options.control
        self.controller = control.shared(meter, clock, ctl) if ctl is not None and ctl.enabled else None
        self.core = RpcCore(lambda: self.identity.device_id, build_methods(self),
                            device_id_for=self._device_id_for if self.client_identities else None)
        self.core.guards.append(self.clients.observe)
        self._cached_reading: Reading | None = None
        self._cache: dict[tuple[Any, ...], Encoded] = {}

    def identity_for(self, peer: str | None) -> Identity:
        """Who the device is to the client at ``peer``: its own identity in
        ``clients:``, else the device's."""
        if peer is None or not self.client_identities:
            return self.identity
        return self.client_identities.get(peer, self.identity)

    def _device_id_for(self, peer: str | None) -> str:
        return self.identity_for(peer).device_id

    @property
    def monophase(self) -> bool:
        return self.identity.profile == "monophase"

    @property
    def minimal(self) -> bool:
        """``payload: minimal``: EM(1).GetStatus with the act_power fields only."""
        return self.options.payload == "minimal"

    def scale_for(self, ctx: CallContext) -> float:
        """The factor for power and current served to this caller (request-side scaling).

        Under ``control:`` each of several batteries is served its own value from
        the meter's controller, as the factor that turns the reading's total into it. While
        the meter is stale the controller is not asked: ``hold`` serves a zero
        adjustment, ``fallback`` the fallback value as it is.
        """
        if (self.controller is None or ctx.peer is None or not self.clients.is_battery(ctx.peer)
                or self.clients.battery_count() <= 1):
            # a battery alone is served the reading as it is (its own law and spike filter do best)
            return self.clients.scale_for(ctx)
        meter = self.meter
        if meter.freshness() is not Freshness.FRESH or meter.latest is None:
            return 1.0 if isinstance(self.options.on_stale, FallbackPolicy) else 0.0
        self.controller.report(ctx.peer, None)
        value, _new = self.controller.serve(ctx.peer)
        total = meter.latest.total_act_power
        return value / total if abs(total) >= 1.0 else 0.0

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
            return Reading(phases=(phase, zero, zero), measured_at=wall(self.clock))
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
            result = (st.em1_summed_status if self.summed else st.em1_status)(reading, index, scale)
            if minimal:
                result = {"id": result["id"], "act_power": result["act_power"]}
            hit = self._store(key, result)
        return hit

    def em1data(self, index: int) -> dict[str, Any]:
        """``EM1Data.GetStatus`` of channel ``index`` (per phase, or the summed meter's)."""
        energy = self.meter.energy
        return (st.em1data_summed_status if self.summed else st.em1data_status)(energy, index)

    def only_real(self, components: dict[str, Any]) -> dict[str, Any]:
        """Keep the components the impersonated model really has (its capture's list)."""
        keep = self.face.components
        return components if keep is None else {k: v for k, v in components.items() if k in keep}

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

    # -- composite views (GetStatus, GetConfig, notifications) -----------------------------
    def sys_status(self, peer: str | None = None) -> dict[str, Any]:
        # The time shown is the wall clock's; uptime counts on the steady one.
        uptime = self.clock.seconds() - self.started_at
        return st.sys_status(self.identity_for(peer), wall(self.clock), uptime, self.cfg_rev)

    def sys_config(self, peer: str | None = None) -> dict[str, Any]:
        port = self.udp_ports[0] if self.udp_ports else None
        config = st.sys_config(self.identity_for(peer), port, self.cfg_rev, self.tz)
        if not self.face.sys_button:
            del config["device"]["sys_btn_toggle"]
        return config

    def static_config(self) -> dict[str, Any]:
        return st.static_config(self.identity, self.modbus)

    def meter_components(self, ctx: CallContext) -> dict[str, Any]:
        """em:0/emdata:0 (or em1:N/em1data:N) as they appear in Shelly.GetStatus.

        Under the ``error`` policy a stale meter shows the device's own
        failure report (nulls + ``power_meter_failure``) instead of failing the
        whole call: Home Assistant polls Shelly.GetStatus and must not drop
        the device because one meter is stale.
        """
        return self.components_at(self.scale_for(ctx))

    def components_at(self, scale: float) -> dict[str, Any]:
        """:meth:`meter_components` for a caller served at ``scale`` (the notifier
        builds them once per distinct scale, not once per client)."""
        try:
            reading: Reading | None = self.serving_reading()
        except RpcError:
            reading = None
        energy = self.meter.energy
        out: dict[str, Any] = {}
        if self.em1_ids:
            for i in self.em1_ids:
                out[f"em1:{i}"] = (st.em1_status(None, i, scale, True) if reading is None
                                   else self.em1_result(reading, i, scale))
            for i in self.em1_ids:
                out[f"em1data:{i}"] = self.em1data(i)
        else:
            out["em:0"] = st.em_status(None, scale, True) if reading is None else self.em_result(reading, scale)
            out["emdata:0"] = st.emdata_status(energy)
        return out

    def full_status(self, ctx: CallContext) -> dict[str, Any]:
        """``Shelly.GetStatus`` for this caller (key order of the real device)."""
        status: dict[str, Any] = {
            "ble": {}, "bthome": {"errors": ["bluetooth_disabled"]}, "cloud": {"connected": False},
        }
        status.update(self.meter_components(ctx))
        status.update({
            "eth": {"ip": ctx.local_ip, "ip6": None}, "modbus": {}, "mqtt": {"connected": False},
            "sys": self.sys_status(ctx.peer), "temperature:0": st.temperature_status(self.temperature()),
            "wifi": st.wifi_status(), "ws": {"connected": False},
        })
        return self.only_real(status)

    def full_config(self, peer: str | None = None) -> dict[str, Any]:
        """``Shelly.GetConfig`` for the client at ``peer`` (key order of the real device)."""
        static = self.static_config()
        config: dict[str, Any] = {k: static[k] for k in ("ble", "bthome", "cloud")}
        if self.em1_ids:
            for i in self.em1_ids:
                config[f"em1:{i}"] = st.em1_config(i, self.face.ct_type)
            for i in self.em1_ids:
                config[f"em1data:{i}"] = {}
        else:
            config["em:0"] = st.em_config()
            config["emdata:0"] = {}
        for key in ("eth", "modbus", "mqtt"):
            config[key] = static[key]
        config["sys"] = self.sys_config(peer)
        for key in ("temperature:0", "wifi", "ws"):
            config[key] = static[key]
        return self.only_real(config)
