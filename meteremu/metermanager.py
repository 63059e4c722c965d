"""The meter manager: owns the meters, their sources, and changes to them at run time.

One service holds what the configuration says about meters and makes the
running tree agree with it, the way buildbot reconfigures its services: a new
meter is created with its counters restored from the store and its source
started; a changed meter keeps its Meter object (devices serving it, counters
and listeners carry on) and only its source is restarted with the new
options; a removed meter's source stops and the meter leaves the
:class:`~meteremu.meterset.MeterSet` (exporters follow it there). A meter
removed and added again gets its old Meter object back.

Everything that changes meters at run time (the ``conf.d`` watcher today)
talks only to this service.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed

from meteremu.config import MeterConfig
from meteremu.interfaces import IReactor
from meteremu.logs import logger
from meteremu.meter import Meter, default_stale_after
from meteremu.meterset import MeterSet
from meteremu.sources import source_module
from meteremu.store import Store

log = logger(__name__)


def energy_key(name: str) -> str:
    return f"meter:{name}:energy"


class MeterManager(MultiService):
    """The meters (:attr:`meters`) and one source service per meter (its children)."""

    def __init__(self, reactor: IReactor, store: Store, configs: Mapping[str, MeterConfig] = {}) -> None:
        super().__init__()
        self.reactor = reactor
        self.store = store
        self.meters = MeterSet()
        self.sources: dict[str, IService] = {}
        self.configs: dict[str, MeterConfig] = {}
        self._retired: dict[str, Meter] = {}
        for mc in configs.values():
            self.add(mc)

    # -- the whole set (buildbot's reconfigService) -------------------------------------
    def reconfig(self, configs: Mapping[str, MeterConfig]) -> Deferred[None]:
        """Make the running meters those of ``configs``: add, restart changed, remove."""
        waits = [self.remove(name) for name in list(self.configs) if name not in configs]
        waits += [self.apply(mc) for mc in configs.values()]
        return DeferredList(waits, fireOnOneErrback=True, consumeErrors=True).addCallback(lambda _: None)

    def apply(self, mc: MeterConfig) -> Deferred[None]:
        """Add the meter, or restart its source if its configuration changed."""
        if mc.name not in self.configs:
            self.add(mc)
            return succeed(None)
        if self.configs[mc.name] == mc:
            return succeed(None)
        return self.replace(mc)

    # -- one meter ---------------------------------------------------------------------
    def add(self, mc: MeterConfig) -> Meter:
        """Create (or revive) a meter and start its source."""
        if mc.name in self.meters:
            raise KeyError(f"meter {mc.name!r} exists already")
        meter = self._retired.pop(mc.name, None)
        if meter is None:
            meter = Meter(mc.name, self.reactor, source_type=mc.source.type)
            saved = self.store.get(energy_key(mc.name))
            if saved is not None:
                try:
                    meter.energy.restore(saved)
                except ValueError as exc:  # never fatal: the counters start over, and it is said
                    self.store.report(energy_key(mc.name), f"was not usable ({exc}); counters start from 0")
            self.store.register(energy_key(mc.name), meter.energy.to_dict)
        self._start_source(meter, mc)
        self.meters.add(meter)
        return meter

    def replace(self, mc: MeterConfig) -> Deferred[None]:
        """Restart just this meter's source with new options (same Meter)."""
        meter = self.meters[mc.name]
        d = self._stop_source(mc.name)
        d.addCallback(lambda _: self._start_source(meter, mc))
        return d

    def remove(self, name: str) -> Deferred[None]:
        """Stop the source and take the meter out (exporters follow)."""
        self._retired[name] = self.meters.remove(name)
        self.configs.pop(name, None)
        return self._stop_source(name)

    def _start_source(self, meter: Meter, mc: MeterConfig) -> None:
        module = source_module(mc.source.type)
        interval = getattr(mc.source.options, "interval", None)
        meter.stale_after = mc.stale_after or default_stale_after(interval, getattr(module, "PUSH", False))
        meter.source_type = mc.source.type
        source = module.make_source(meter, mc.source.options, self.reactor, self.store)
        self.sources[mc.name] = source
        self.configs[mc.name] = mc
        source.setServiceParent(self)

    def _stop_source(self, name: str) -> Deferred[None]:
        source = self.sources.pop(name, None)
        if source is None:
            return succeed(None)
        return maybeDeferred(source.disownServiceParent).addCallback(lambda _: None)
