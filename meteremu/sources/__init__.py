"""The source type registry: the single place a new source type is added.

Each entry names a module that provides ``Options`` (a frozen dataclass the
config validator builds) and ``make_source(meter, options, reactor, store)``
returning a ``Service`` that feeds the meter; ``PUSH = True`` marks a push
source (default ``stale_after`` 60 s). Modules are imported only when a
config uses them, so a simulator-only setup never loads the HTTP client stacks.
"""

from __future__ import annotations

from types import ModuleType

from meteremu.registry import LazyOptions

SOURCE_MODULES: dict[str, str] = {
    "simulator": "meteremu.sources.simulator",
    "envoy": "meteremu.sources.envoy",
    "homeassistant": "meteremu.sources.homeassistant",
    "dsmr": "meteremu.sources.dsmr",
    "homewizard": "meteremu.sources.homewizard",
    "kamstrup": "meteremu.sources.kamstrup",
    "mqtt": "meteremu.sources.mqtt",
    "http_json": "meteremu.sources.http_json",
    "tasmota": "meteremu.sources.tasmota",
    "tibber_pulse": "meteremu.sources.tibber_pulse",
    "sml": "meteremu.sources.sml",
    "shelly": "meteremu.sources.shelly",
    "sma_energy_meter": "meteremu.sources.sma_energy_meter",
    "modbus": "meteremu.sources.modbus",
    "esphome": "meteremu.sources.esphome",
}

_options = LazyOptions(SOURCE_MODULES)


def source_module(kind: str) -> ModuleType:
    return _options.module(kind)


def option_types() -> LazyOptions:
    """``{type name: Options dataclass}`` for the config validator (lazy)."""
    return _options
