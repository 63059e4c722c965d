"""What the unit and integration tests of envoy share (helpers, data)."""

from __future__ import annotations

import json
import os
from typing import Any

from meteremu.sources.envoy import parse
from meteremu.sources.envoy.parse import (
    EnvoyParseError,
)
from tests.support.fake_envoy import (
    expectations,
    fixture_path,
)

EXPECT = expectations()


TOL = 0.002


DAY = 86400.0


def load(folder: str, name: str) -> Any:
    with open(fixture_path(folder, name), "rb") as handle:
        body = handle.read()
    try:
        return json.loads(body)
    except ValueError:
        raise EnvoyParseError(f"{name} is not JSON") from None


def has(folder: str, name: str) -> bool:
    return os.path.isfile(fixture_path(folder, name))


def meters_of(folder: str) -> tuple[parse.CTConfig, ...]:
    return parse.parse_meters(load(folder, "ivp_meters")) if has(folder, "ivp_meters") else ()


def expected_grid(folder: str) -> tuple[list[float], tuple[float, float] | None] | None:
    """Per-phase grid power (and lifetime import/export) the readings path must give.

    From derived_expectations: the enabled net CT's first-phaseCount channels;
    with a total-consumption CT, total minus production per channel; else none.
    """
    readings = {r["measurementType"]: r for r in EXPECT[folder].get("readings", [])}
    net = readings.get("net-consumption")
    if net is not None and net["state"] == "enabled":
        return net["channels_activePower_first_phaseCount"], (net["actEnergyDlvd"], net["actEnergyRcvd"])
    total, prod = readings.get("total-consumption"), readings.get("production")
    if total and prod and total["state"] == prod["state"] == "enabled":
        return [t - p for t, p in zip(total["channels_activePower_first_phaseCount"],
                                      prod["channels_activePower_first_phaseCount"], strict=True)], None
    return None


# Folders whose net-CT channels add up to the aggregate counters; the curated
# 7.3.466/7.6.175 readings mix systems (tests/fixtures/envoy/README.md, caveats).
CONSISTENT_READINGS = ("8.3.5167_3rd-pv", "8.2.4286_with_3cts_and_battery_split",
                       "8.3.5169_with_generator", "8.2.4345_with_device_data", "4.10.35",
                       "7.3.517_system_2", "8.2.4382_ACB", "7.6.185_with_cts_and_battery_3t")


def channel_energy(folder: str) -> list[tuple[float, float]]:
    """(actEnergyDlvd, actEnergyRcvd) of the net CT's first phaseCount channels, from the file."""
    net = next(m for m in meters_of(folder) if m.measurement_type == "net-consumption")
    raw = next(r for r in load(folder, "ivp_meters_readings") if r["eid"] == net.eid)
    return [(c["actEnergyDlvd"], c["actEnergyRcvd"]) for c in raw["channels"][: net.phase_count]]


LIVEDATA_DOC = {
    "connection": {"mqtt_state": "connected", "prov_state": "configured", "auth_state": "ok",
                   "sc_stream": "enabled", "sc_debug": "disabled"},
    "meters": {"last_update": 1686081089, "soc": 0, "main_relay_state": 1, "gen_relay_state": 5,
               "backup_bat_mode": 1, "backup_soc": 0,
               "pv": {"agg_p_mw": 29212, "agg_s_mva": 248309},
               "storage": {"agg_p_mw": 0, "agg_s_mva": 0},
               "grid": {"agg_p_mw": 340582, "agg_s_mva": 934790},
               "load": {"agg_p_mw": 369794, "agg_s_mva": 1183099},
               "generator": {"agg_p_mw": 0, "agg_s_mva": 0}},
    "tasks": {"task_id": 1813978567, "timestamp": 1685743309},
    "counters": {"main_CfgLoad": 1, "MqttClient_publish": 280675, "rest_Status": 71872},
}


def livedata_three_phase(stream: str = "enabled", last_update: int = 1686081089) -> dict[str, Any]:
    data = json.loads(json.dumps(LIVEDATA_DOC))
    data["connection"]["sc_stream"] = stream
    data["meters"]["last_update"] = last_update
    data["meters"]["phase_count"] = 3
    data["meters"]["grid"].update({"agg_p_ph_a_mw": 1200000, "agg_p_ph_b_mw": -300500, "agg_p_ph_c_mw": 7000})
    return data


class DictStore:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value
