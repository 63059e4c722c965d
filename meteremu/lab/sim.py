"""The simulated clock: one run of a scenario in-process, event by event.

Events (a heap ordered by time, then by insertion): the meter samples the
true grid and its payload is delivered to meteremu's meter path after the
scenario's latency; each battery's polls at its own jittered cadence (the
MQTT source's own once-a-second timer runs on the same clock). The device answers at the instant the
poll arrives (loopback round trips are a millisecond, far below every
cadence); the battery's law acts on the answer at once.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from meteremu.lab import ctclient
from meteremu.lab.battery import Battery
from meteremu.lab.household import Household
from meteremu.lab.household import build as build_household
from meteremu.lab.loop import Loop
from meteremu.lab.meterpath import (
    EPOCH,
    DeviceSetup,
    SimMeterPath,
    payload,
    served_total,
    sim_clock,
    udp_request,
)
from meteremu.lab.scenario import Scenario


class Simulation:
    """One scenario, one seed, one meteremu setup, on a simulated ``task.Clock``."""

    def __init__(self, scenario: Scenario, seed: int, setup: DeviceSetup,
                 household: Household | None = None) -> None:
        self.scenario, self.seed, self.setup = scenario, seed, setup
        self.household = household or build_household(scenario.household, scenario.duration, seed)
        self.loop = Loop(scenario, seed, self.household)
        self.clock = sim_clock()
        self.path = SimMeterPath(setup, self.clock)
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._ids = itertools.count(1)

    def at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._order), action))

    def run(self) -> Loop:
        loop, duration = self.loop, self.scenario.duration
        for sampled in loop.sample_times():
            self.at(sampled, self._sampler(sampled))
        for battery in loop.batteries:
            self.at(loop.first_poll(battery.index), self._poller(battery))
        while self._heap:
            t, _, action = heapq.heappop(self._heap)
            if t > duration:
                break
            loop.advance(t)
            self.clock.advance(EPOCH + t - self.clock.seconds())  # the source's own timers run first
            action()
        loop.advance(duration)
        return loop

    def _sampler(self, sampled: float) -> Callable[[], None]:
        def sample() -> None:
            phases = self.loop.grid_phases()
            data = payload(phases)
            self.at(self.loop.delivery(sampled), lambda: self._deliver(data, sum(phases)))
        return sample

    def _deliver(self, data: bytes, total: float) -> None:
        self.loop.last_published = total
        self.path.deliver(data)

    def _poller(self, battery: Battery) -> Callable[[], None]:
        def poll() -> None:
            now = self.loop.t
            if self.path.ct is not None:
                self._ask_ct(battery, now)
            else:
                battery.observe(now, self._ask(battery))
            self.at(self.loop.next_poll(battery, now), poll)
        return poll

    def _ask_ct(self, battery: Battery, now: float) -> None:
        """One CT002 request through the CT's core, and the battery's reading of the answer."""
        loop = self.loop
        if loop.lost():
            battery.observe(now, None)
            return
        answer = ctclient.read(battery, self.path.poll_ct(battery.ip, ctclient.request(battery)))
        if answer is None or loop.lost():
            battery.observe(now, None)
            return
        battery.observe(now, answer.value, answer.nb, answer.info_idx, answer.inspecting)

    def _ask(self, battery: Battery) -> float | None:
        """One poll through meteremu's transport core; the value served, or None."""
        loop = self.loop
        if loop.lost():
            return None
        if battery.spec.transport == "http":
            status, body = self.path.poll_http(battery.ip)
            value = served_total(body, envelope=False) if status == 200 else None
        else:
            reply = self.path.poll_udp(battery.ip, udp_request(next(self._ids)))
            value = served_total(reply, envelope=True) if reply is not None else None
        if value is not None and loop.lost():
            return None
        return value


def simulate(scenario: Scenario, seed: int, setup: DeviceSetup) -> Loop:
    return Simulation(scenario, seed, setup).run()
