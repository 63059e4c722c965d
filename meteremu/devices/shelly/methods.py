"""The Pro 3EM's RPC methods, as handlers for :class:`RpcCore` (pure).

Each handler takes ``(params, ctx)`` and returns the result object or raises
:class:`RpcError`. Component methods need ``params.id`` (-103 without it,
-105 for an instance the profile does not have), as the real device does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from meteremu.devices.shelly import status as st
from meteremu.devices.shelly.rpc import INVALID_ARGUMENT, NOT_FOUND, CallContext, Handler, RpcError

if TYPE_CHECKING:
    from meteremu.devices.shelly.device import ShellyDevice


def component_id(params: dict[str, Any], valid: range) -> int:
    if "id" not in params:
        raise RpcError(INVALID_ARGUMENT, "Missing required 'id'")
    value = params["id"]
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or (isinstance(value, float) and not math.isfinite(value)) or value != int(value)):
        raise RpcError(INVALID_ARGUMENT, "Invalid argument 'id'")
    value = int(value)
    if value not in valid:
        raise RpcError(NOT_FOUND, f"Argument 'id', value {value} not found!")
    return value


def build_methods(dev: ShellyDevice) -> dict[str, Handler]:
    """The method table for one device. ListMethods reports exactly these keys."""
    em_ids = range(0) if dev.monophase else range(1)
    em1_ids = range(3) if dev.monophase else range(0)

    def device_info(params: dict, ctx: CallContext) -> Any:
        return st.device_info(dev.identity)

    minimal = dev.options.payload == "minimal"

    def em_get_status(params: dict, ctx: CallContext) -> Any:
        component_id(params, em_ids)
        return dev.em_result(dev.serving_reading(), dev.scale_for(ctx), minimal)

    def em_get_config(params: dict, ctx: CallContext) -> Any:
        component_id(params, em_ids)
        return st.em_config()

    def emdata_get_status(params: dict, ctx: CallContext) -> Any:
        component_id(params, em_ids)
        return st.emdata_status(dev.meter.energy)

    def emdata_get_config(params: dict, ctx: CallContext) -> Any:
        component_id(params, em_ids)
        return {}

    def em1_get_status(params: dict, ctx: CallContext) -> Any:
        index = component_id(params, em1_ids)
        return dev.em1_result(dev.serving_reading(), index, dev.scale_for(ctx), minimal)

    def em1_get_config(params: dict, ctx: CallContext) -> Any:
        return st.em1_config(component_id(params, em1_ids))

    def em1data_get_status(params: dict, ctx: CallContext) -> Any:
        return st.em1data_status(dev.meter.energy, component_id(params, em1_ids))

    def em1data_get_config(params: dict, ctx: CallContext) -> Any:
        component_id(params, em1_ids)
        return {}

    def sys_status() -> dict[str, Any]:
        now = dev.clock.seconds()
        return st.sys_status(dev.identity, now, now - dev.started_at, dev.cfg_rev)

    def sys_config() -> dict[str, Any]:
        port = dev.udp_ports[0] if dev.udp_ports else None
        return st.sys_config(dev.identity, port, dev.cfg_rev, dev.tz)

    def meter_components(ctx: CallContext) -> dict[str, Any]:
        """em:0/emdata:0 (or em1:N/em1data:N) as they appear in Shelly.GetStatus.

        Under the ``error`` policy a stale meter shows the device's own
        failure report (nulls + ``power_meter_failure``) instead of failing the
        whole call: Home Assistant polls Shelly.GetStatus and must not drop
        the device because one meter is stale.
        """
        return components_at(dev.scale_for(ctx))

    def components_at(scale: float) -> dict[str, Any]:
        """:func:`meter_components` for a caller served at ``scale`` (the notifier
        builds them once per distinct scale, not once per client)."""
        try:
            reading, failure = dev.serving_reading(), False
        except RpcError:
            reading, failure = None, True
        out: dict[str, Any] = {}
        if dev.monophase:
            for i in em1_ids:
                out[f"em1:{i}"] = (st.em1_status(None, i, scale, failure) if reading is None
                                   else dev.em1_result(reading, i, scale))
            for i in em1_ids:
                out[f"em1data:{i}"] = st.em1data_status(dev.meter.energy, i)
        else:
            out["em:0"] = st.em_status(None, scale, failure) if reading is None else dev.em_result(reading, scale)
            out["emdata:0"] = st.emdata_status(dev.meter.energy)
        return out

    def full_status(ctx: CallContext) -> dict[str, Any]:
        status: dict[str, Any] = {
            "ble": {}, "bthome": {"errors": ["bluetooth_disabled"]}, "cloud": {"connected": False},
        }
        status.update(meter_components(ctx))
        status.update({
            "eth": {"ip": ctx.local_ip, "ip6": None}, "modbus": {}, "mqtt": {"connected": False},
            "sys": sys_status(), "temperature:0": st.temperature_status(dev.temperature()),
            "wifi": st.wifi_status(), "ws": {"connected": False},
        })
        return status

    def full_config() -> dict[str, Any]:
        static = st.static_config(dev.identity, dev.modbus)
        config: dict[str, Any] = {k: static[k] for k in ("ble", "bthome", "cloud")}
        if dev.monophase:
            for i in em1_ids:
                config[f"em1:{i}"] = st.em1_config(i)
            for i in em1_ids:
                config[f"em1data:{i}"] = {}
        else:
            config["em:0"] = st.em_config()
            config["emdata:0"] = {}
        for key in ("eth", "modbus", "mqtt"):
            config[key] = static[key]
        config["sys"] = sys_config()
        for key in ("temperature:0", "wifi", "ws"):
            config[key] = static[key]
        return config

    def get_status(params: dict, ctx: CallContext) -> Any:
        return full_status(ctx)

    def get_config(params: dict, ctx: CallContext) -> Any:
        return full_config()

    def get_components(params: dict, ctx: CallContext) -> Any:
        offset = params.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise RpcError(INVALID_ARGUMENT, "Invalid argument 'offset'")
        if params.get("dynamic_only"):
            return {"components": [], "cfg_rev": dev.cfg_rev, "offset": offset, "total": 0}
        include = params.get("include") or []
        keys = params.get("keys")
        if not isinstance(include, list) or (keys is not None and not isinstance(keys, list)):
            raise RpcError(INVALID_ARGUMENT, "Invalid argument 'include'/'keys'")
        status, config = full_status(ctx), full_config()
        names = [k for k in status if keys is None or k in keys]
        components = []
        for name in names[offset:]:
            item: dict[str, Any] = {"key": name}
            if "status" in include:
                item["status"] = status[name]
            if "config" in include:
                item["config"] = config.get(name, {})
            components.append(item)
        return {"components": components, "cfg_rev": dev.cfg_rev, "offset": offset, "total": len(names)}

    def temperature_get_status(params: dict, ctx: CallContext) -> Any:
        component_id(params, range(1))
        return st.temperature_status(dev.temperature())

    def temperature_get_config(params: dict, ctx: CallContext) -> Any:
        component_id(params, range(1))
        return st.static_config(dev.identity, dev.modbus)["temperature:0"]

    def simple(value: Any) -> Handler:
        return lambda params, ctx: value() if callable(value) else value

    # The notifier builds NotifyStatus/NotifyFullStatus from these same views.
    dev.meter_components = meter_components
    dev.components_at = components_at
    dev.full_status = full_status

    table: dict[str, Handler] = {
        "Shelly.GetDeviceInfo": device_info,
        "Shelly.GetStatus": get_status,
        "Shelly.GetConfig": get_config,
        "Shelly.GetComponents": get_components,
        "Shelly.ListMethods": lambda params, ctx: {"methods": sorted(table)},
        "Sys.GetStatus": lambda params, ctx: sys_status(),
        "Sys.GetConfig": lambda params, ctx: sys_config(),
        "WiFi.GetStatus": simple(st.wifi_status),
        "WiFi.GetConfig": simple(lambda: st.static_config(dev.identity, dev.modbus)["wifi"]),
        "Eth.GetStatus": lambda params, ctx: {"ip": ctx.local_ip, "ip6": None},
        "Eth.GetConfig": simple(lambda: st.static_config(dev.identity, dev.modbus)["eth"]),
        "Cloud.GetStatus": simple(lambda: {"connected": False}),
        "Cloud.GetConfig": simple(lambda: st.static_config(dev.identity, dev.modbus)["cloud"]),
        "MQTT.GetStatus": simple(lambda: {"connected": False}),
        "MQTT.GetConfig": simple(lambda: st.mqtt_config(dev.identity)),
        "Ws.GetStatus": simple(lambda: {"connected": False}),
        "Ws.GetConfig": simple(lambda: st.static_config(dev.identity, dev.modbus)["ws"]),
        "Modbus.GetStatus": simple(lambda: {}),
        "Modbus.GetConfig": simple(lambda: {"enable": dev.modbus}),
        "Temperature.GetStatus": temperature_get_status,
        "Temperature.GetConfig": temperature_get_config,
        "EM.GetStatus": em_get_status,
        "EM.GetConfig": em_get_config,
        "EM.GetCTTypes": simple(lambda: {"supported": ["120A", "400A"]}),
        "EMData.GetStatus": emdata_get_status,
        "EMData.GetConfig": emdata_get_config,
        "EM1.GetStatus": em1_get_status,
        "EM1.GetConfig": em1_get_config,
        "EM1Data.GetStatus": em1data_get_status,
        "EM1Data.GetConfig": em1data_get_config,
    }
    return table
