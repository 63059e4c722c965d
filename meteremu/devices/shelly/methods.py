"""The Pro 3EM's RPC methods, as handlers for :class:`RpcCore` (pure).

Each handler takes ``(params, ctx)`` and returns the result object or raises
:class:`RpcError`. Component methods need ``params.id`` (-103 without it,
-105 for an instance the profile does not have), as the real device does.

The handlers read the device through :class:`DeviceView`, the public views a
:class:`~meteremu.devices.shelly.device.ShellyDevice` offers: this module
does not import the device (the device builds its table from here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

from meteremu.devices.shelly import status as st
from meteremu.devices.shelly.faces import Face
from meteremu.devices.shelly.identity import Identity
from meteremu.devices.shelly.jsonfmt import Encoded
from meteremu.devices.shelly.rpc import INVALID_ARGUMENT, NOT_FOUND, CallContext, Handler, RpcError
from meteremu.meter import Meter
from meteremu.reading import Reading


class DeviceView(Protocol):
    """What the method handlers need of a device."""

    identity: Identity
    modbus: bool
    cfg_rev: int
    em_ids: range
    em1_ids: range
    face: Face
    temperature: Callable[[], float | None]
    meter: Meter

    @property
    def minimal(self) -> bool: ...
    def scale_for(self, ctx: CallContext) -> float: ...
    def serving_reading(self) -> Reading: ...
    def em_result(self, reading: Reading, scale: float, minimal: bool = False) -> Encoded: ...
    def em1_result(self, reading: Reading, index: int, scale: float, minimal: bool = False) -> Encoded: ...
    def identity_for(self, peer: str | None) -> Identity: ...
    def em1data(self, index: int) -> dict[str, Any]: ...
    def sys_status(self, peer: str | None = None) -> dict[str, Any]: ...
    def sys_config(self, peer: str | None = None) -> dict[str, Any]: ...
    def static_config(self) -> dict[str, Any]: ...
    def full_status(self, ctx: CallContext) -> dict[str, Any]: ...
    def full_config(self, peer: str | None = None) -> dict[str, Any]: ...


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


def build_methods(dev: DeviceView) -> dict[str, Handler]:
    """The method table for one device. ListMethods reports exactly these keys."""
    em_ids, em1_ids = dev.em_ids, dev.em1_ids

    def device_info(params: dict[str, Any], ctx: CallContext) -> Any:
        return st.device_info(dev.identity_for(ctx.peer))

    def em_get_status(params: dict[str, Any], ctx: CallContext) -> Any:
        component_id(params, em_ids)
        return dev.em_result(dev.serving_reading(), dev.scale_for(ctx), dev.minimal)

    def em_get_config(params: dict[str, Any], ctx: CallContext) -> Any:
        component_id(params, em_ids)
        return st.em_config()

    def emdata_get_status(params: dict[str, Any], ctx: CallContext) -> Any:
        component_id(params, em_ids)
        return st.emdata_status(dev.meter.energy)

    def emdata_get_config(params: dict[str, Any], ctx: CallContext) -> Any:
        component_id(params, em_ids)
        return {}

    def em1_get_status(params: dict[str, Any], ctx: CallContext) -> Any:
        index = component_id(params, em1_ids)
        return dev.em1_result(dev.serving_reading(), index, dev.scale_for(ctx), dev.minimal)

    def em1_get_config(params: dict[str, Any], ctx: CallContext) -> Any:
        return st.em1_config(component_id(params, em1_ids), dev.face.ct_type)

    def em1data_get_status(params: dict[str, Any], ctx: CallContext) -> Any:
        return dev.em1data(component_id(params, em1_ids))

    def em1data_get_config(params: dict[str, Any], ctx: CallContext) -> Any:
        component_id(params, em1_ids)
        return {}

    def get_status(params: dict[str, Any], ctx: CallContext) -> Any:
        return dev.full_status(ctx)

    def get_config(params: dict[str, Any], ctx: CallContext) -> Any:
        return dev.full_config(ctx.peer)

    def get_components(params: dict[str, Any], ctx: CallContext) -> Any:
        offset = params.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise RpcError(INVALID_ARGUMENT, "Invalid argument 'offset'")
        if params.get("dynamic_only"):
            return {"components": [], "cfg_rev": dev.cfg_rev, "offset": offset, "total": 0}
        include = params.get("include") or []
        keys = params.get("keys")
        if not isinstance(include, list) or (keys is not None and not isinstance(keys, list)):
            raise RpcError(INVALID_ARGUMENT, "Invalid argument 'include'/'keys'")
        status, config = dev.full_status(ctx), dev.full_config(ctx.peer)
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

    def temperature_get_status(params: dict[str, Any], ctx: CallContext) -> Any:
        component_id(params, range(1))
        return st.temperature_status(dev.temperature())

    def temperature_get_config(params: dict[str, Any], ctx: CallContext) -> Any:
        component_id(params, range(1))
        return dev.static_config()["temperature:0"]

    def simple(value: Callable[[], Any]) -> Handler:
        return lambda params, ctx: value()

    def static(key: str) -> Handler:
        return lambda params, ctx: dev.static_config()[key]

    table: dict[str, Handler] = {
        "Shelly.GetDeviceInfo": device_info,
        "Shelly.GetStatus": get_status,
        "Shelly.GetConfig": get_config,
        "Shelly.GetComponents": get_components,
        "Shelly.ListMethods": lambda params, ctx: {"methods": sorted(table)},
        "Sys.GetStatus": lambda params, ctx: dev.sys_status(ctx.peer),
        "Sys.GetConfig": lambda params, ctx: dev.sys_config(ctx.peer),
        "WiFi.GetStatus": simple(st.wifi_status),
        "WiFi.GetConfig": static("wifi"),
        "Eth.GetStatus": lambda params, ctx: {"ip": ctx.local_ip, "ip6": None},
        "Eth.GetConfig": static("eth"),
        "Cloud.GetStatus": simple(lambda: {"connected": False}),
        "Cloud.GetConfig": static("cloud"),
        "MQTT.GetStatus": simple(lambda: {"connected": False}),
        "MQTT.GetConfig": lambda params, ctx: st.mqtt_config(dev.identity_for(ctx.peer)),
        "Ws.GetStatus": simple(lambda: {"connected": False}),
        "Ws.GetConfig": static("ws"),
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
