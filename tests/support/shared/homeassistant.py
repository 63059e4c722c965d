"""What the unit and integration tests of homeassistant share (helpers, data)."""

from __future__ import annotations

from typing import Any

from tests.support.fake_homeassistant import (
    DSMR_ENERGY,
    DSMR_POWER,
    DSMR_POWER_PRODUCTION,
)

W = {"unit_of_measurement": "W", "device_class": "power", "state_class": "measurement"}


def rest(entity_id: str, state: str, unit: str | None = "W", ts: str = "2023-11-14T22:13:20+00:00",
         **attributes: Any) -> dict[str, Any]:
    attrs = dict(attributes)
    if unit is not None:
        attrs["unit_of_measurement"] = unit
    return {"entity_id": entity_id, "state": state, "attributes": attrs, "last_changed": ts,
            "last_updated": ts, "context": {"id": "01H", "parent_id": None, "user_id": None}}


def state(entity_id: str, value: str, **attributes: Any) -> dict[str, Any]:
    return rest(entity_id, value, unit=None, **attributes)


DSMR_STATES = [
    state("sensor.electricity_meter_power_consumption", "0.244", **DSMR_POWER),
    state("sensor.electricity_meter_power_production", "0.0", **DSMR_POWER_PRODUCTION),
    state("sensor.electricity_meter_energy_consumption_tarif_1", "4.426", **DSMR_ENERGY),
    state("sensor.electricity_meter_energy_consumption_tarif_2", "2.399",
          **{**DSMR_ENERGY, "friendly_name": "Electricity Meter Energy consumption (tarif 2)"}),
    state("sensor.electricity_meter_energy_production_tarif_1", "2.444",
          **{**DSMR_ENERGY, "friendly_name": "Electricity Meter Energy production (tarif 1)"}),
    state("sensor.electricity_meter_voltage_phase_l1", "230.0",
          unit_of_measurement="V", device_class="voltage", state_class="measurement"),
    state("sensor.energy_cost_today", "1.2", unit_of_measurement="EUR", device_class="monetary"),
    state("sensor.grid_power_today_max", "3000", **W),
    state("sensor.kitchen_cabinet_power", "12", **W),
    state("sensor.power_hvac", "800", **W),
    state("sensor.solar_power", "2000", **W),
    state("sensor.washing_machine_power", "5", **W),
    state("light.kitchen", "on", friendly_name="Kitchen"),
]
