"""Register maps of common meters: facts from the makers' published register tables.

* Eastron SDM630 (Modbus protocol, input registers, IEEE 754 float32, high
  word first): phase voltages 0x0000/02/04 V, currents 0x0006/08/0A A,
  powers 0x000C/0E/10 W (positive on import), power factors 0x001E/20/22,
  frequency 0x0046 Hz, import 0x0048 and export 0x004A kWh.
* Eastron SDM120: the single-phase subset at the same addresses.
* Chint DTSU666 (holding registers, float32 high word first, scaled):
  phase voltages Ua/Ub/Uc 0x2006/08/0A in 0.1 V, currents 0x200C/0E/10 in
  mA, powers Pa/Pb/Pc 0x2014/16/18 in 0.1 W, power factors 0x202C/2E/30 in
  thousandths, frequency 0x2044 in 0.01 Hz, ImpEp 0x101E and ExpEp 0x1028 in
  kWh.
"""

from __future__ import annotations

from meteremu.sources.modbus.options import ModbusRegister as R

PRESETS: dict[str, dict[str, R]] = {
    "sdm630": {
        "a_voltage": R(0x0000, "input", "float32"), "b_voltage": R(0x0002, "input", "float32"),
        "c_voltage": R(0x0004, "input", "float32"),
        "a_current": R(0x0006, "input", "float32"), "b_current": R(0x0008, "input", "float32"),
        "c_current": R(0x000A, "input", "float32"),
        "a_power": R(0x000C, "input", "float32"), "b_power": R(0x000E, "input", "float32"),
        "c_power": R(0x0010, "input", "float32"),
        "a_pf": R(0x001E, "input", "float32"), "b_pf": R(0x0020, "input", "float32"),
        "c_pf": R(0x0022, "input", "float32"),
        "frequency": R(0x0046, "input", "float32"),
        "energy_import": R(0x0048, "input", "float32", unit="kWh"),
        "energy_export": R(0x004A, "input", "float32", unit="kWh"),
    },
    "sdm120": {
        "a_voltage": R(0x0000, "input", "float32"), "a_current": R(0x0006, "input", "float32"),
        "a_power": R(0x000C, "input", "float32"), "a_pf": R(0x001E, "input", "float32"),
        "frequency": R(0x0046, "input", "float32"),
        "energy_import": R(0x0048, "input", "float32", unit="kWh"),
        "energy_export": R(0x004A, "input", "float32", unit="kWh"),
    },
    "dtsu666": {
        "a_voltage": R(0x2006, "holding", "float32", scale=0.1),
        "b_voltage": R(0x2008, "holding", "float32", scale=0.1),
        "c_voltage": R(0x200A, "holding", "float32", scale=0.1),
        "a_current": R(0x200C, "holding", "float32", scale=0.001),
        "b_current": R(0x200E, "holding", "float32", scale=0.001),
        "c_current": R(0x2010, "holding", "float32", scale=0.001),
        "a_power": R(0x2014, "holding", "float32", scale=0.1),
        "b_power": R(0x2016, "holding", "float32", scale=0.1),
        "c_power": R(0x2018, "holding", "float32", scale=0.1),
        "a_pf": R(0x202C, "holding", "float32", scale=0.001),
        "b_pf": R(0x202E, "holding", "float32", scale=0.001),
        "c_pf": R(0x2030, "holding", "float32", scale=0.001),
        "frequency": R(0x2044, "holding", "float32", scale=0.01),
        "energy_import": R(0x101E, "holding", "float32", unit="kWh"),
        "energy_export": R(0x1028, "holding", "float32", unit="kWh"),
    },
}
