"""Type markers shared by the option dataclasses and the config validator.

Option dataclasses live next to the code they configure (a source module owns
its options); ``meteremu.config`` validates YAML into them generically by
reading their annotations. These markers tell it how to read a value.

- ``Duration``: a float of seconds, written ``500ms``, ``2s``, ``10m``, ``1h``,
  ``1d`` or as a bare number of seconds.
- Field metadata ``{"doc": "..."}`` is used in error messages.
"""

from __future__ import annotations

from typing import Annotated


class _DurationMarker:
    """Marks a float field that accepts duration strings."""

    def __repr__(self) -> str:
        return "duration"


DURATION = _DurationMarker()

Duration = Annotated[float, DURATION]
