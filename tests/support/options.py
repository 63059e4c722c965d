"""Walking the option dataclasses, for tests that check every option is documented or validated."""

from __future__ import annotations

import dataclasses
import typing


def option_fields(roots: list[type]) -> list[tuple[type, str]]:
    """``(dataclass, field name)`` for the roots and every dataclass nested in them."""
    seen: list[type] = []
    todo = list(roots)
    while todo:
        cls = todo.pop(0)
        if cls in seen:
            continue
        seen.append(cls)
        for hint in typing.get_type_hints(cls).values():
            if typing.get_origin(hint) is typing.ClassVar:  # class data (a device's face), not a key
                continue
            stack = [hint]
            while stack:
                item = stack.pop()
                if dataclasses.is_dataclass(item):
                    todo.append(item)
                stack.extend(typing.get_args(item))
    internal = {"SourceConfig", "MeterConfig", "DeviceConfig"}  # built by hand, not from keys
    return [(cls, f.name) for cls in seen if cls.__name__ not in internal
            for f in dataclasses.fields(cls) if f.init]
