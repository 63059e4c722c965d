"""Exporters: where readings go besides the emulated devices.

``prometheus`` is built in (``/metrics``). Every other exporter is a module
listed here that provides ``Options`` (a frozen dataclass; the config key
under ``exporters:`` is the registry key) and
``make_exporter(options, meters, reactor, metrics, store, days) -> Service``,
where ``meters`` is the live :class:`~meteremu.meterset.MeterSet` and
``days`` the application's :class:`~meteremu.days.DayLedger`.
"""

from __future__ import annotations

from types import ModuleType

from meteremu.registry import LazyOptions

EXPORTER_MODULES: dict[str, str] = {
    "mqtt": "meteremu.exporters.mqtt",
    "influxdb": "meteremu.exporters.influxdb",
}

_options = LazyOptions(EXPORTER_MODULES)


def exporter_module(kind: str) -> ModuleType:
    return _options.module(kind)


def option_types() -> LazyOptions:
    return _options
