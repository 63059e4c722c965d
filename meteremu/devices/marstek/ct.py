"""One emulated Marstek CT002/CT003: what to answer each battery's request (pure, clock injected).

:meth:`CtDevice.answer` takes the datagram and its source and returns the
reply (or None and why not); the UDP protocol only moves bytes, and the
battery lab calls the same method on its simulated clock.

Two modes:

* ``control`` (default): each battery gets its own value in its phase field
  (and the total), from the meter's :class:`~meteremu.control.Controller`,
  announced in a bucket of ``bucket_count`` (2) and multiplied by it, so the
  battery's division gives the value back and its spike filter is off, and
  the charge/discharge fields filled from the batteries' *targets*
  (instructed power). ``info_idx`` changes only when the battery gets a new
  value: it dedupes on it, so a battery acts once per decision however
  often it polls (one answer per meter reading per battery, at most).
* ``relay``: what a real CT sends: the grid per phase, the battery count and
  the charge/discharge sums of each bucket (``participate=0`` left out), one
  battery answered per meter reading, round robin.

Stale meter (``on_stale``): ``error`` answers nobody (the battery falls back
to its own safe mode), ``hold`` answers a zero adjustment, ``fallback: W``
aims the batteries' total output at W from their reported power alone. A
NaN reading is never served: it is treated as stale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from meteremu.control.controller import Controller
from meteremu.devices.marstek import ct_codec as codec
from meteremu.devices.marstek.options import CtOptions
from meteremu.devices.marstek.slots import Slot, SlotTable
from meteremu.devices.shelly.options import FallbackPolicy
from meteremu.meter import Freshness, IClock, Meter
from meteremu.reading import Reading

NULL_MAC = "000000000000"
BUCKETS = ("A", "B", "C", "D")
FALLBACK_PERIOD = 1.0  # s between synthetic readings under on_stale: fallback


@dataclass(frozen=True)
class CtIdentity:
    """What the overview and metrics show of the CT (the Face identity)."""

    mac: str
    device_id: str
    model: str
    fw_id: str = ""
    serial: str | None = None
    manufacturer: str = "Marstek"


class CtClients:
    """The Face's ``clients``: batteries by MAC with what they report and are served."""

    def __init__(self, device: CtDevice) -> None:
        self.device = device

    def overview(self) -> list[dict[str, Any]]:
        control = self.device.controller.overview()["batteries"] if self.device.controller else []
        by_key = {b["key"]: b for b in control}
        out = []
        for slot in self.device.slots.active():
            entry = slot.as_dict()
            entry.update(transport="udp", battery=True, last_seen=slot.last_seen)
            steer = by_key.get(slot.mac)
            if steer is not None:
                entry.update(target=steer["target"], share=steer["share"], state=steer["state"])
            out.append(entry)
        return out

    def active_batteries(self) -> list[str]:
        return [slot.mac for slot in self.device.slots.active()]


class CtDevice:
    """State and answers of one emulated CT (see the module docstring)."""

    def __init__(self, options: CtOptions, identity: CtIdentity, meter: Meter, clock: IClock,
                 controller: Controller | None = None) -> None:
        self.options, self.identity, self.meter, self.clock = options, identity, meter, clock
        self.kind = options.KIND
        self.controller = controller if options.mode == "control" else None
        forget = self.controller.forget if self.controller is not None else None
        self.slots = SlotTable(clock, options.slots, options.eviction_floor, on_evict=forget)
        self.clients = CtClients(self)
        self.dropped: dict[str, int] = {}
        self.answered = 0
        self._seen_reading: Reading | None = None
        self._fallback_at = -math.inf
        self._cycle = 0  # relay: meter readings seen
        self._cycle_answered = -1  # relay: the cycle someone was answered in
        self._waiting: set[str] = set()  # relay: polled since the last answer
        self._info_idx = 0  # relay: one counter for the CT

    # -- the one entry point -------------------------------------------------------------
    def answer(self, data: bytes, ip: str, port: int) -> tuple[bytes | None, str | None]:
        """``(reply, None)`` or ``(None, why not)`` for one datagram."""
        try:
            request = codec.parse_request(data)
        except codec.FrameError:
            return self._drop("garbage")
        ct_mac = self._ct_mac_for(request)
        if ct_mac is None:
            return self._drop("other_ct")
        slot = self.slots.touch(request.battery_mac, ip, port, request.battery_type)
        if slot is None:
            return self._drop("slots_full")
        slot.phase, slot.power, slot.participate = request.phase, request.power, request.participate
        if self.controller is not None:  # known before the reading it may be part of
            self.controller.report(slot.mac, float(slot.power) if slot.counts else 0.0, slot.phase,
                                   request.battery_type)
        grid = self._grid()
        if grid is None and self.options.on_stale == "error":
            return self._drop("stale")
        if self.options.mode == "relay":
            response = self._relay(slot, ct_mac, grid)
        else:
            response = self._control(slot, ct_mac, grid)
        if response is None:
            return self._drop("round_robin")
        slot.answers += 1
        self.answered += 1
        return codec.encode_response(response, self.kind), None

    def _drop(self, reason: str) -> tuple[None, str]:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return None, reason

    def _ct_mac_for(self, request: codec.CtRequest) -> str | None:
        """The CT MAC to answer with, or None: the battery is paired with another CT."""
        if self.options.ct_mac == "echo":
            return request.ct_mac or self.identity.mac
        if request.ct_mac in ("", NULL_MAC, self.identity.mac):
            return self.identity.mac
        return None

    # -- the meter ------------------------------------------------------------------------
    def _grid(self) -> tuple[float, float, float] | None:
        """The grid per phase when fresh and finite; None when stale (the policy decides)."""
        meter = self.meter
        reading = meter.latest
        if reading is None or meter.freshness() is not Freshness.FRESH:
            return None
        powers = tuple(reading.phase(i).act_power for i in range(3))
        if not all(math.isfinite(p) for p in powers):
            return None
        if reading is not self._seen_reading:  # (the controller follows the meter itself)
            self._seen_reading = reading
            self._cycle += 1
        return powers[0], powers[1], powers[2]

    def _fallback_grid(self) -> float | None:
        """Under ``fallback: W``: the grid that would make the batteries' total output W."""
        policy = self.options.on_stale
        if not isinstance(policy, FallbackPolicy):
            return None
        return policy.fallback - sum(s.power for s in self.slots.active() if s.counts)

    # -- control mode -----------------------------------------------------------------------
    def _control(self, slot: Slot, ct_mac: str, grid: tuple[float, float, float] | None) -> codec.CtResponse:
        controller = self.controller
        assert controller is not None
        if grid is None:
            synthetic = self._fallback_grid()
            now = self.clock.seconds()
            if synthetic is None:  # hold: a zero adjustment, and no new info_idx
                return self._control_response(slot, ct_mac, 0)
            if now - self._fallback_at >= FALLBACK_PERIOD:
                self._fallback_at = now
                controller.reading(synthetic)
        if not slot.phase:  # inspecting its phase: the real values, no control yet
            values = grid or (0.0, 0.0, 0.0)
            return self._response(slot, ct_mac, tuple(int(round(v)) for v in values),  # type: ignore[arg-type]
                                  int(round(sum(values))), (1, 1, 1, 1))
        value, new = controller.serve(slot.mac)
        if new:
            slot.info_idx = (slot.info_idx + 1) % 256
        return self._control_response(slot, ct_mac, int(round(value)))

    def _control_response(self, slot: Slot, ct_mac: str, value: int) -> codec.CtResponse:
        """The battery's own value, announced in a bucket of ``bucket_count`` and multiplied by it.

        The firmware divides by the bucket count (``int(g/nb)``, exact for a
        multiple) and, with a count above 1, skips its one-shot spike filter
        (specs/batteries.md §2.2): the controller judges noise itself, and
        the filter would hold every step back one ~3 s regulation cycle.
        """
        n = self.options.bucket_count
        phases = [0, 0, 0]
        index = codec.phase_field(slot.phase)
        if index is not None:
            phases[index] = value * n
        slot.served = value
        return self._response(slot, ct_mac, (phases[0], phases[1], phases[2]), value * n, (n, n, n, n),
                              sums=self._instructed_sums())

    def _instructed_sums(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Charge (−) and discharge (+) sums per bucket of the batteries' targets."""
        controller = self.controller
        charge, discharge = [0.0] * 5, [0.0] * 5
        for slot in self.slots.active():
            state = controller.batteries.get(slot.mac) if controller else None
            if state is None or not slot.counts:
                continue
            level = state.target if state.target is not None else state.power
            self._add(charge, discharge, slot.phase, level)
        return tuple(int(round(v)) for v in charge), tuple(int(round(v)) for v in discharge)

    @staticmethod
    def _add(charge: list[float], discharge: list[float], phase: str, power: float) -> None:
        if phase not in BUCKETS:
            return
        index = 1 + BUCKETS.index(phase)
        if power < 0:
            charge[index] += power
        else:
            discharge[index] += power

    # -- relay mode ---------------------------------------------------------------------------
    def _relay(self, slot: Slot, ct_mac: str, grid: tuple[float, float, float] | None) -> codec.CtResponse | None:
        active = self.slots.active()
        if grid is None:
            synthetic = self._fallback_grid()
            if synthetic is None:  # hold: zero in every field
                return self._response(slot, ct_mac, (0, 0, 0), 0, self._counts(active))
            grid = (synthetic / 3, synthetic / 3, synthetic / 3)
            now = self.clock.seconds()
            if now - self._fallback_at >= FALLBACK_PERIOD:  # a synthetic reading: a new cycle
                self._fallback_at = now
                self._cycle += 1
        if not self._relay_turn(slot, active):
            return None
        self._info_idx = (self._info_idx + 1) % 256
        slot.info_idx = self._info_idx
        charge, discharge = [0.0] * 5, [0.0] * 5
        for other in active:
            if other.counts:
                self._add(charge, discharge, other.phase, other.power)
        sums = (tuple(int(round(v)) for v in charge), tuple(int(round(v)) for v in discharge))
        phases = tuple(int(round(v)) for v in grid)
        index = codec.phase_field(slot.phase)
        slot.served = phases[index] if index is not None else int(round(sum(grid)))
        return self._response(slot, ct_mac, phases, int(round(sum(grid))),  # type: ignore[arg-type]
                              self._counts(active), sums=sums)

    def _relay_turn(self, slot: Slot, active: list[Slot]) -> bool:
        """One answer per meter reading, to the battery answered longest ago among those polling."""
        if self._cycle_answered == self._cycle:
            self._waiting.add(slot.mac)
            return False
        candidates = [s for s in active if s.mac in self._waiting and s.mac != slot.mac]
        if any((s.last_answered, s.mac) < (slot.last_answered, slot.mac) for s in candidates):
            self._waiting.add(slot.mac)
            return False
        self._waiting.clear()
        self._cycle_answered = self._cycle
        slot.last_answered = self._cycle
        return True

    @staticmethod
    def _counts(active: list[Slot]) -> tuple[int, int, int, int]:
        counts = [sum(1 for s in active if s.counts and s.phase == bucket) for bucket in BUCKETS]
        return counts[0], counts[1], counts[2], counts[3]

    # -- framing ---------------------------------------------------------------------------------
    def _response(self, slot: Slot, ct_mac: str, phases: tuple[int, int, int], total: int,
                  counts: tuple[int, int, int, int],
                  sums: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> codec.CtResponse:
        charge, discharge = sums or ((0,) * 5, (0,) * 5)
        return codec.CtResponse(
            ct_type=self.options.ct_type, ct_mac=ct_mac, battery_type=slot.battery_type, battery_mac=slot.mac,
            phase_power=phases, total_power=total, chrg_nb=counts, wifi_rssi=self.options.wifi_rssi,
            info_idx=slot.info_idx,
            chrg_power=(charge[0], charge[1], charge[2], charge[3], charge[4]),
            dchrg_power=(discharge[0], discharge[1], discharge[2], discharge[3], discharge[4]),
            energy=self._energy() if self.kind == "ct003" else None)

    def _energy(self) -> tuple[int, int, int, int]:
        """CT003's energy fields (Wh): the meter's import and export, no tariff split (all 'normal')."""
        energy = self.meter.energy
        imported = sum(p.import_wh for p in energy.phases)
        exported = sum(p.export_wh for p in energy.phases)
        return 0, int(imported), 0, int(exported)
