"""Load forecasting: a dataset of bucketed power, an MLP model, a trainer.

This package's ``__init__`` holds only :class:`ForecastOptions`, so the config
loader can validate the ``forecast:`` section without importing numpy or
scikit-learn. Those are imported (by :mod:`meteremu.forecast.model` and
:mod:`meteremu.forecast.trainer`) only when ``forecast.enabled`` is true, so
the service stays small without forecasting.

- :mod:`meteremu.forecast.dataset`: readings → per-``resolution`` mean buckets
  in the SQLite store (pure bucketing plus a thin Service).
- :mod:`meteremu.forecast.model`: features, the ``MLPRegressor``, baselines,
  metrics and model files (pure: no reactor).
- :mod:`meteremu.forecast.trainer`: the training Service with its own
  one-thread pool, and the facade the dashboard reads.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from meteremu.configtypes import Duration

DAY = 86400.0
NEEDS = ("numpy", "sklearn")


def missing_packages() -> list[str]:
    """The packages forecasting needs that are not installed (found without importing them)."""
    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


@dataclass(frozen=True)
class ForecastOptions:
    """``forecast:``: off by default. Every count is in samples of ``resolution``."""

    enabled: bool = field(default=False, metadata={
        "doc": "sample power into the store and train a forecast model (imports numpy/scikit-learn)"})
    resolution: Duration = field(default=10.0, metadata={
        "doc": "bucket width of the dataset: readings are averaged per bucket of the reading's own time"})
    retention: Duration = field(default=14 * DAY, metadata={
        "doc": "how much data to keep (e.g. 14d), counted back from the newest sample"})
    window: int = field(default=90, metadata={"doc": "input samples the model sees (90 x 10 s = 15 min)"})
    horizon: int = field(default=60, metadata={"doc": "samples forecast at once (60 x 10 s = 10 min)"})
    hidden_layers: tuple[int, ...] = field(default=(64, 16, 64), metadata={
        "doc": "MLPRegressor hidden layer sizes"})
    max_iter: int = field(default=100, metadata={"doc": "training epochs at most (early stopping may end sooner)"})
    random_state: int = field(default=0, metadata={"doc": "seed: same data and seed, same model"})
    train_interval: Duration = field(default=3600.0, metadata={
        "doc": "time between scheduled trainings, on the real clock"})
    retry_interval: Duration = field(default=300.0, metadata={"doc": "retry after a failed training run"})
    max_samples: int = field(default=20000, metadata={
        "doc": "training examples per epoch at most (a random subset beyond that)"})
    test_fraction: float = field(default=0.2, metadata={
        "doc": "share of the newest data held out to measure the model and the baselines"})
    max_gap: Duration = field(default=60.0, metadata={
        "doc": "gaps up to this long are interpolated linearly; longer ones split the series"})
    mape_floor: float = field(default=50.0, metadata={
        "doc": "actual values with |W| below this are left out of MAPE (it explodes near zero)"})
    flush_interval: Duration = field(default=5.0, metadata={
        "doc": "how often finished buckets are written to the store, in one transaction"})

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        if self.enabled:
            missing = missing_packages()
            if missing:
                names = " and ".join("scikit-learn" if m == "sklearn" else m for m in missing)
                errors.append(("enabled", f"false, or install {names} first (pip install numpy scikit-learn; "
                                          "the container image: build it with --build-arg FORECAST=1)"))
        if not self.resolution > 0:
            errors.append(("resolution", "a duration above 0"))
        if self.retention < 3600:
            errors.append(("retention", "a duration of at least 1h, e.g. 14d (a bare number is seconds)"))
        if self.window < 1:
            errors.append(("window", "a whole number of samples, 1 or more"))
        if self.horizon < 1:
            errors.append(("horizon", "a whole number of samples, 1 or more"))
        if not self.hidden_layers or any(size < 1 for size in self.hidden_layers):
            errors.append(("hidden_layers", "a non-empty list of layer sizes, each 1 or more"))
        if self.max_iter < 1:
            errors.append(("max_iter", "a whole number, 1 or more"))
        if self.train_interval <= 0:
            errors.append(("train_interval", "a duration above 0"))
        if self.retry_interval <= 0:
            errors.append(("retry_interval", "a duration above 0"))
        if self.max_samples < 100:
            errors.append(("max_samples", "a whole number, 100 or more"))
        if not 0 < self.test_fraction <= 0.5:
            errors.append(("test_fraction", "a number above 0 and at most 0.5"))
        if self.mape_floor < 0:
            errors.append(("mape_floor", "watts, 0 or more"))
        if self.flush_interval <= 0:
            errors.append(("flush_interval", "a duration above 0"))
        return errors
