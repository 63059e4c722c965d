"""A device's clock made monotonic, for sources whose samples carry the device's own time. Pure.

The Meter drops a reading not newer than the latest one (a repeated sample):
after one timestamp from the future (a device clock glitch) every later,
correct one would be dropped until that date. So a repeated timestamp stays a
repeat, and a different one that is not newer than the last published time is
published 1 ms after it: still a new sample. (The Envoy source applies the
same rule with its own twist for samples without a timestamp.)
"""

from __future__ import annotations


class MonotonicStamps:
    """``publish(stamp)`` → the time to publish a sample stamped ``stamp`` with."""

    def __init__(self) -> None:
        self.last_stamp: float | None = None  # the last sample's own time
        self.last_published: float | None = None  # … and the time it was published with

    def publish(self, stamp: float) -> float:
        last = self.last_published
        if last is None or stamp > last:
            published = stamp
        elif stamp == self.last_stamp:
            published = last  # the same sample again: not new
        else:
            published = last + 0.001  # the device's clock went back: still a new sample
        self.last_stamp, self.last_published = stamp, published
        return published
