"""A lab battery speaking the CT002 protocol: its request, and what it reads in the answer (pure).

Frames come from meteremu's codec (:mod:`meteremu.devices.marstek.ct_codec`),
the facts from specs/batteries.md §3.1: a battery names its phase (``0``
while it inspects), reports its own AC power, and reads its phase's field
(the total for the combined bucket), the bucket's ``*_chrg_nb`` and
``info_idx``. Lab batteries join the combined bucket (``D``, the ABC total),
as on a three-phase meter whose owner lets the batteries cover the whole
house; their output still goes to their own phase in the plant.
"""

from __future__ import annotations

from dataclasses import dataclass

from meteremu.devices.marstek import ct_codec as codec
from meteremu.lab.battery import Battery

BATTERY_TYPES = {"venus": "VNSE3-0", "hmg50": "HMG-50", "hmg50_float": "HMG-50", "b2500": "HMJ-2",
                 "hoymiles": "VNSA-0", "growatt": "VNSA-0"}
SOURCE_PORT = 22222


@dataclass(frozen=True)
class CtAnswer:
    value: float  # what the battery regulates on (W, + import)
    nb: int
    info_idx: int
    inspecting: bool


def request(battery: Battery, kind: str = "ct002") -> bytes:
    """The battery's next request (phase 0 for its first ``inspections`` polls)."""
    inspecting = battery.polls < battery.inspections
    phase = "" if inspecting else "D"
    participate = True if battery.spec.model == "b2500" else None
    ct_type = "HME-4" if kind == "ct002" else "HME-3"
    return codec.encode_request(codec.CtRequest(BATTERY_TYPES.get(battery.spec.model, "VNSE3-0"), battery.mac,
                                                ct_type, "", phase, int(round(battery.power)), participate))


def read(battery: Battery, data: bytes | None) -> CtAnswer | None:
    """What the battery takes from an answer; None when it is not one for it."""
    if data is None:
        return None
    try:
        _kind, answer = codec.parse_response(data)
    except codec.FrameError:
        return None
    if answer.battery_mac != battery.mac:
        return None
    inspecting = battery.polls < battery.inspections
    return CtAnswer(float(answer.total_power), max(1, answer.chrg_nb[3]), answer.info_idx, inspecting)
