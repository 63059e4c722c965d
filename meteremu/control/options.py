"""Configuration of active control (``control:`` of a CT device, or of a Shelly device)."""

from __future__ import annotations

from dataclasses import dataclass, field

from meteremu.configtypes import Duration


@dataclass(frozen=True)
class ControlOptions:
    """How the controller shares the grid error between the batteries of one meter.

    The defaults are read from the Marstek firmware facts (specs/batteries.md
    §2.2): the integer law ignores |g| < 10 W at rest and imports below 10 W,
    subtracts 5 W per importing step, and regulates at most every ~3 s.
    """

    enabled: bool = field(default=True, metadata={"doc": "steer each battery individually"})
    target: float = field(default=0.0, metadata={"doc": "grid power to aim at (W, + import)"})
    deadband: float = field(default=20.0, metadata={
        "doc": "grid error (W) left alone: below it no battery is moved (no hunting on noise)"})
    average: int = field(default=4, metadata={
        "doc": "a small error is judged on the mean of this many quiet readings (meter noise)"})
    fast_error: float = field(default=250.0, metadata={
        "doc": "an error this large (W) is acted on at once (a kettle, an oven); a smaller one only once "
               "'average' quiet readings agree on its side (a washer's motor pausing is not chased)"})
    min_step: float = field(default=15.0, metadata={
        "doc": "smallest adjustment given to one battery (W): below the firmware deadband it is ignored"})
    import_bias: float = field(default=5.0, metadata={
        "doc": "added to a discharge adjustment: the Venus law takes 5 W off each importing step"})
    pace: Duration = field(default=3.2, metadata={
        "doc": "at least this long between two adjustments of one battery (its regulation gate)"})
    settle: Duration = field(default=1.5, metadata={
        "doc": "a reading counts once every battery output has been steady this long (meter latency)"})
    trim_min: float = field(default=6.0, metadata={
        "doc": "after a step, a leftover this large (W) or more is trimmed by one battery once the quiet "
               "readings show it beyond their noise (0: no trims); the Venus law takes an importing step of "
               "11 W or more, 5 W less"})
    trim_window: Duration = field(default=30.0, metadata={"doc": "how long after a step leftovers are trimmed"})
    trims: int = field(default=3, metadata={"doc": "trims at most per step"})
    rebalance: float = field(default=100.0, metadata={
        "doc": "on target, batteries further than this (W) from their share are moved toward it (net zero)"})
    move_tolerance: float = field(default=15.0, metadata={
        "doc": "a reported power change below this (W) is not movement"})
    response_time: Duration = field(default=5.0, metadata={
        "doc": "how long a battery takes to act on a value: an adjustment sent twice and not followed "
               "within this is a miss (full or empty); Shelly path: the error must shrink within this"})
    saturation_hold: Duration = field(default=60.0, metadata={
        "doc": "a battery that stopped following is left at its limit this long before it is tried again "
               "(doubled each time it is found still full or empty, up to 16x)"})
    weights: dict[str, float] = field(default_factory=dict, metadata={
        "doc": "share per battery (MAC on CT devices, IP on Shelly); others get default_weight"})
    default_weight: float = field(default=1.0, metadata={"doc": "share of batteries not in weights"})
    max_charge: dict[str, float] = field(default_factory=dict, metadata={
        "doc": "known charge limit (W) per battery, if any"})
    max_discharge: dict[str, float] = field(default_factory=dict, metadata={
        "doc": "known discharge limit (W) per battery, if any"})

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        for name in ("deadband", "min_step", "import_bias", "move_tolerance", "rebalance", "fast_error",
                     "trim_min"):
            value = getattr(self, name)
            if not 0 <= value < 10_000:
                errors.append((name, f"expected watts 0-10000; got {value}"))
        if not 1 <= self.average <= 20:
            errors.append(("average", f"expected 1-20 readings; got {self.average}"))
        if not 0 <= self.trims <= 10:
            errors.append(("trims", f"expected 0-10 trims; got {self.trims}"))
        for name in ("pace", "settle", "response_time", "saturation_hold", "trim_window"):
            if getattr(self, name) < 0:
                errors.append((name, "expected a duration of 0 or more"))
        for key, weight in self.weights.items():
            if not 0 <= weight < float("inf"):
                errors.append((f"weights.{key}", f"expected a share >= 0; got {weight}"))
        if not 0 <= self.default_weight < float("inf"):
            errors.append(("default_weight", f"expected a share >= 0; got {self.default_weight}"))
        for name in ("max_charge", "max_discharge"):
            for key, watts in getattr(self, name).items():
                if not 0 <= watts < 100_000:
                    errors.append((f"{name}.{key}", f"expected watts 0-100000; got {watts}"))
        return errors
