"""The set of running meters, which can change while meteremu runs.

Meters come and go with ``conf.d`` hot reload; exporters and devices follow
through ``subscribe``. The set is the one place that knows which meters exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from meteremu.meter import Meter

Observer = Callable[[Meter], None]


class MeterSet:
    def __init__(self) -> None:
        self._meters: dict[str, Meter] = {}
        self._added: list[Observer] = []
        self._removed: list[Observer] = []

    def add(self, meter: Meter) -> None:
        if meter.name in self._meters:
            raise KeyError(f"meter {meter.name!r} exists already")
        self._meters[meter.name] = meter
        for observer in list(self._added):
            observer(meter)

    def remove(self, name: str) -> Meter:
        meter = self._meters.pop(name)
        for observer in list(self._removed):
            observer(meter)
        return meter

    def subscribe(self, added: Observer, removed: Observer | None = None) -> Callable[[], None]:
        """Call ``added`` for every meter now and later, ``removed`` when one goes.

        Returns a function that ends the subscription.
        """
        self._added.append(added)
        if removed is not None:
            self._removed.append(removed)
        for meter in list(self._meters.values()):
            added(meter)

        def cancel() -> None:
            if added in self._added:
                self._added.remove(added)
            if removed is not None and removed in self._removed:
                self._removed.remove(removed)

        return cancel

    def __getitem__(self, name: str) -> Meter:
        return self._meters[name]

    def __contains__(self, name: object) -> bool:
        return name in self._meters

    def __iter__(self) -> Iterator[str]:
        return iter(self._meters)

    def __len__(self) -> int:
        return len(self._meters)

    def values(self) -> list[Meter]:
        return list(self._meters.values())

    def items(self) -> list[tuple[str, Meter]]:
        return list(self._meters.items())

    def keys(self) -> list[str]:
        return list(self._meters)
