"""What the unit and integration tests of forecast share (helpers, data)."""

from __future__ import annotations

from typing import Any

__all__ = ["NO_ML", "T0", "Trainer", "fm", "model_base", "np", "sine"]

try:
    import numpy as np

    from meteremu.forecast import model as fm
    from meteremu.forecast.trainer import Trainer, model_base
except ImportError:  # pragma: no cover - the test command installs them
    np = None
    NO_ML = "needs numpy and scikit-learn (pip install numpy scikit-learn)"
else:
    NO_ML = None


T0 = 1_704_067_200.0  # 2024-01-01 00:00 UTC, a Monday


def sine(n: int, period: int = 60, mean: float = 1000.0, amplitude: float = 800.0) -> tuple[Any, Any]:
    ts = T0 + np.arange(n) * 10.0
    return ts, mean + amplitude * np.sin(2 * np.pi * np.arange(n) / period)
