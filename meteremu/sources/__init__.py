"""The source type registry: the single place a new source type is added.

Each entry names a module that provides ``Options`` (a frozen dataclass the
config validator builds) and ``make_source(meter, options, reactor, store)``
returning a ``Service`` that feeds the meter. Modules are imported lazily so a
setup that uses only the simulator never imports the HTTP client stacks.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

SOURCE_MODULES: dict[str, str] = {
    "simulator": "meteremu.sources.simulator",
}


def source_module(kind: str) -> ModuleType:
    return importlib.import_module(SOURCE_MODULES[kind])


def option_types() -> dict[str, Any]:
    """``{type name: Options dataclass}`` for the config validator."""
    return {kind: source_module(kind).Options for kind in SOURCE_MODULES}
