"""A lazily imported ``{type name: Options dataclass}`` mapping.

The config validator needs the option types of the sources and devices a
file actually uses; importing every source module up front would pull in
HTTP/WebSocket/serial stacks a simulator-only setup never needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any


class LazyOptions(Mapping[str, Any]):
    """Keys are known up front; a module is imported when its type is used."""

    def __init__(self, modules: Mapping[str, str]) -> None:
        self._modules = modules

    def module(self, kind: str) -> ModuleType:
        return importlib.import_module(self._modules[kind])

    def __getitem__(self, kind: str) -> Any:
        if kind not in self._modules:
            raise KeyError(kind)
        return self.module(kind).Options

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)
