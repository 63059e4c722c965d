"""Pure builders: meter state → the Pro 3EM's result objects.

Every transport (HTTP, WebSocket, UDP, Modbus) answers from these functions,
so there is one copy of the Shelly shapes. Values are rounded to the
firmware's decimals here, and totals are summed from the *unrounded* phase
values, as the device does (``total_act_power`` 2413.825 next to phases that
add up to 2413.8). Key order follows the real device.
"""

from __future__ import annotations

import time
from typing import Any

from meteremu.devices.shelly.identity import Identity
from meteremu.energy import EnergyCounters
from meteremu.reading import PHASE_NAMES, Reading

EM_PHASE_FIELDS = ("current", "voltage", "act_power", "aprt_power", "pf", "freq")
MINIMAL_EM_KEYS = ("a_act_power", "b_act_power", "c_act_power", "total_act_power")


def em_status(reading: Reading | None, scale: float = 1.0, failure: bool = False) -> dict[str, Any]:
    """``EM.GetStatus`` for id 0.

    ``scale`` multiplies power and current (request-side scaling for several
    batteries); voltage, pf and frequency are never scaled. With ``failure``
    (or no reading at all) every measurement is null and ``errors`` holds
    ``power_meter_failure``, as the device reports a broken meter.
    """
    result: dict[str, Any] = {"id": 0}
    if reading is None or failure:
        for name in PHASE_NAMES:
            for f in EM_PHASE_FIELDS:
                result[f"{name}_{f}"] = None
        result.update(n_current=None, total_current=None, total_act_power=None,
                      total_aprt_power=None, user_calibrated_phase=[],
                      errors=["power_meter_failure"])
        return result
    total_current = total_act = total_aprt = 0.0
    for i, name in enumerate(PHASE_NAMES):
        p = reading.phase(i)
        current, act, aprt = p.current * scale, p.act_power * scale, p.aprt_power * scale
        total_current += current
        total_act += act
        total_aprt += aprt
        result[f"{name}_current"] = round(current, 3)
        result[f"{name}_voltage"] = round(p.voltage, 1)
        result[f"{name}_act_power"] = round(act, 1)
        result[f"{name}_aprt_power"] = round(aprt, 1)
        result[f"{name}_pf"] = round(p.pf, 2)
        result[f"{name}_freq"] = round(p.freq, 1)
    result["n_current"] = None
    result["total_current"] = round(total_current, 3)
    result["total_act_power"] = round(total_act, 3)
    result["total_aprt_power"] = round(total_aprt, 3)
    result["user_calibrated_phase"] = []
    return result


def minimal_em_status(full: dict[str, Any]) -> dict[str, Any]:
    """Only the act_power fields, for batteries that choke on the full payload."""
    return {k: full[k] for k in MINIMAL_EM_KEYS}


def em1_status(reading: Reading | None, index: int, scale: float = 1.0, failure: bool = False) -> dict[str, Any]:
    """``EM1.GetStatus`` for channel ``index`` (monophase profile: phase = channel)."""
    if reading is None or failure:
        return {"id": index, "current": None, "voltage": None, "act_power": None,
                "aprt_power": None, "pf": None, "freq": None, "calibration": "factory",
                "errors": ["power_meter_failure"]}
    p = reading.phase(index)
    return {
        "id": index,
        "current": round(p.current * scale, 3),
        "voltage": round(p.voltage, 1),
        "act_power": round(p.act_power * scale, 1),
        "aprt_power": round(p.aprt_power * scale, 1),
        "pf": round(p.pf, 2),
        "freq": round(p.freq, 1),
        "calibration": "factory",
    }


def emdata_status(energy: EnergyCounters) -> dict[str, Any]:
    """``EMData.GetStatus``: perpetual per-phase counters (never scaled)."""
    result: dict[str, Any] = {"id": 0}
    for i, name in enumerate(PHASE_NAMES):
        c = energy.phases[i] if i < len(energy.phases) else None
        result[f"{name}_total_act_energy"] = round(c.import_wh if c else 0.0, 2)
        result[f"{name}_total_act_ret_energy"] = round(c.export_wh if c else 0.0, 2)
    result["total_act"] = round(energy.total_import_wh, 2)
    result["total_act_ret"] = round(energy.total_export_wh, 2)
    return result


def em1_summed_status(reading: Reading | None, index: int, scale: float = 1.0,
                      failure: bool = False) -> dict[str, Any]:
    """``EM1.GetStatus`` of an EM Gen3 / Pro EM-50 face (two channels).

    Channel 0 carries the whole meter, its phases summed (a battery on such a
    meter regulates on ``em1:0``'s ``act_power``); channel 1 has no clamp: no
    current and no power, at the line's voltage and frequency. The pf of the
    sum is its active over its apparent power. Key order is the fw 1.7.5
    captures' (voltage before current, unlike the Pro 3EM's em1); decimals
    are the Pro 3EM's.
    """
    if reading is None or failure:
        return em1_status(None, index, scale, True)
    line = reading.phase(0)
    if index != 0:
        return {"id": index, "voltage": round(line.voltage, 1), "current": 0.0, "act_power": 0.0,
                "aprt_power": 0.0, "pf": 0.0, "freq": round(line.freq, 1), "calibration": "factory"}
    phases = [reading.phase(i) for i in range(len(PHASE_NAMES))]
    act = sum(p.act_power for p in phases) * scale
    aprt = sum(p.aprt_power for p in phases) * scale
    return {
        "id": 0,
        "voltage": round(line.voltage, 1),
        "current": round(sum(p.current for p in phases) * scale, 3),
        "act_power": round(act, 1),
        "aprt_power": round(aprt, 1),
        "pf": round(min(1.0, abs(act) / aprt), 2) if aprt > 0 else 0.0,
        "freq": round(line.freq, 1),
        "calibration": "factory",
    }


def em1data_summed_status(energy: EnergyCounters, index: int) -> dict[str, Any]:
    """``EM1Data.GetStatus`` of a two-channel face: the meter's totals on channel 0."""
    if index != 0:
        return {"id": index, "total_act_energy": 0.0, "total_act_ret_energy": 0.0}
    return {"id": 0, "total_act_energy": round(energy.total_import_wh, 2),
            "total_act_ret_energy": round(energy.total_export_wh, 2)}


def em1data_status(energy: EnergyCounters, index: int) -> dict[str, Any]:
    c = energy.phases[index] if index < len(energy.phases) else None
    return {"id": index,
            "total_act_energy": round(c.import_wh if c else 0.0, 2),
            "total_act_ret_energy": round(c.export_wh if c else 0.0, 2)}


# -- configuration objects ------------------------------------------------------


def device_info(ident: Identity, auth_en: bool = False) -> dict[str, Any]:
    """``GET /shelly`` and ``Shelly.GetDeviceInfo`` (same object, fw 1.6.1 key order)."""
    return {
        "name": ident.name, "id": ident.device_id, "mac": ident.mac, "slot": 0,
        "model": ident.model, "gen": ident.gen, "fw_id": ident.fw_id, "ver": ident.ver,
        "app": ident.app, "auth_en": auth_en, "auth_domain": ident.device_id if auth_en else None,
        "profile": ident.profile,
    } if ident.profile else {  # EM Gen3 / Pro EM-50: no profiles, no key (real captures)
        "name": ident.name, "id": ident.device_id, "mac": ident.mac, "slot": 0,
        "model": ident.model, "gen": ident.gen, "fw_id": ident.fw_id, "ver": ident.ver,
        "app": ident.app, "auth_en": auth_en, "auth_domain": ident.device_id if auth_en else None,
    }


def em_config() -> dict[str, Any]:
    return {"id": 0, "name": None, "blink_mode_selector": "active_energy", "phase_selector": "all",
            "monitor_phase_sequence": False, "reverse": {}, "ct_type": "120A"}


def em1_config(index: int, ct_type: str = "120A") -> dict[str, Any]:
    return {"id": index, "name": None, "reverse": False, "ct_type": ct_type}


def sys_config(ident: Identity, udp_port: int | None, cfg_rev: int, tz: str | None) -> dict[str, Any]:
    device: dict[str, Any] = {"name": ident.name, "mac": ident.mac, "fw_id": ident.fw_id, "discoverable": True,
                              "eco_mode": False, "profile": ident.profile, "addon_type": None,
                              "sys_btn_toggle": True}
    if not ident.profile:  # EM Gen3 / Pro EM-50: no profiles, no key (real captures)
        del device["profile"]
    return {
        "device": device,
        "location": {"tz": tz, "lat": None, "lon": None},
        "debug": {"level": 2, "file_level": None, "mqtt": {"enable": False},
                  "websocket": {"enable": False}, "udp": {"addr": None}},
        "ui_data": {},
        "rpc_udp": {"dst_addr": None, "listen_port": udp_port},
        "sntp": {"server": "time.google.com"},
        "cfg_rev": cfg_rev,
    }


def sys_status(ident: Identity, now: float, uptime: float, cfg_rev: int) -> dict[str, Any]:
    """``Sys.GetStatus``. Times are the host's: it is the device's clock now."""
    local = time.localtime(now)
    return {
        "mac": ident.mac, "restart_required": False, "time": time.strftime("%H:%M", local),
        "unixtime": int(now), "last_sync_ts": int(now), "uptime": int(uptime),
        "ram_size": 247524, "ram_free": 113080, "ram_min_free": 97524,
        "fs_size": 524288, "fs_free": 180224, "cfg_rev": cfg_rev, "kvs_rev": 0,
        "schedule_rev": 0, "webhook_rev": 0, "btrelay_rev": 0, "available_updates": {},
        "reset_reason": 3, "utc_offset": local.tm_gmtoff,
    }


def temperature_status(celsius: float | None) -> dict[str, Any]:
    if celsius is None:
        return {"id": 0, "tC": None, "tF": None}
    return {"id": 0, "tC": round(celsius, 1), "tF": round(celsius * 9 / 5 + 32, 1)}


def wifi_status() -> dict[str, Any]:
    """The emulator is wired: Wi-Fi reads as the real device on Ethernet only."""
    return {"sta_ip": None, "status": "disconnected", "ssid": None, "rssi": 0, "sta_ip6": []}


def mqtt_config(ident: Identity) -> dict[str, Any]:
    return {"enable": False, "server": None, "client_id": ident.device_id, "user": None,
            "ssl_ca": None, "topic_prefix": ident.device_id, "rpc_ntf": True,
            "status_ntf": False, "use_client_cert": False, "enable_rpc": True,
            "enable_control": True}


def static_config(ident: Identity, modbus: bool) -> dict[str, Any]:
    """Components of Shelly.GetConfig that do not depend on live state."""
    return {
        "ble": {"enable": False, "rpc": {"enable": False}},
        "bthome": {},
        "cloud": {"enable": False, "server": "iot.shelly.cloud:6012/jrpc"},
        "eth": {"enable": True, "ipv4mode": "dhcp", "ip": None, "netmask": None, "gw": None,
                "nameserver": None, "server_mode": False},
        "modbus": {"enable": modbus},
        "mqtt": mqtt_config(ident),
        "temperature:0": {"id": 0, "name": None, "report_thr_C": 5.0, "offset_C": 0.0},
        "wifi": {"sta": {"ssid": None, "is_open": True, "enable": False, "ipv4mode": "dhcp",
                         "ip": None, "netmask": None, "gw": None, "nameserver": None}},
        "ws": {"enable": False, "server": None, "ssl_ca": "ca.pem"},
    }
