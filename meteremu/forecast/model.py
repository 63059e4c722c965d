"""The forecast model, its baselines and its metrics (pure: no reactor, no I/O but model files).

Series: the dataset's buckets are put on a regular grid of ``resolution``
(missing buckets are NaN); a gap of at most ``max_gap`` is filled by linear
interpolation, a longer one stays NaN and no training example spans it.

Features (``feature_spec``): for an example ending at grid index ``i`` the
inputs are the last ``window`` samples — the first ``window − 1`` as their
difference from the last one, the last one as a level — standardised with the
training series' standard deviation (and mean, for the level), plus
time-of-day and day-of-week as sin/cos pairs (local time of the first forecast
step). The targets are the next ``horizon`` samples *as changes from the last
input*, standardised, so a network that has learnt nothing predicts
persistence rather than nonsense. One ``MLPRegressor`` (relu, adam) predicts
all ``horizon`` steps jointly.

Shrinkage (:func:`fit_shrink`): the network minimises squared error, so when
an appliance may or may not switch off it predicts the *mean* change — good
for MSE, but worse than "no change" by absolute error. Each forecast step's
change is therefore multiplied by a factor in [0, 1] chosen to minimise MAE on
the validation slice (never on the test tail). On 14 days of the simulated
household this turns a model that beat persistence only on MSE into one that
beats it on MSE, MAE and MAPE.

Training is done in chunks with ``partial_fit`` (about 2000 examples each), so
the trainer's stop flag is looked at every few tens of milliseconds and its
progress moves smoothly. An epoch is one pass over (at most ``max_samples``)
examples; training stops after ``max_iter`` epochs, or earlier when the loss on
a validation slice (the newest 10 % of the training part) has not improved for
10 epochs, keeping the best weights. BLAS runs single-threaded while training
(``threadpoolctl``): the trainer's pool has one thread, and OpenBLAS' own
threads only fight over the cores of a small machine.

Honest metrics: the newest ``test_fraction`` of the grid is held out; the
model never trains on an example whose target reaches into it. On the
held-out examples we report, for the model and for two baselines:

- persistence: every future step equals the last observed value;
- seasonal naive: every future step equals the value one day (rounded to
  whole samples) earlier; examples whose day-old values are missing are left
  out of this baseline (its ``n`` tells how many points it was scored on).

MSE (W²), MAE (W) and MAPE (%). MAPE divides by the actual value, so it is
computed only over actual values with ``|W| >= mape_floor`` (default 50 W;
grid power crosses zero whenever PV meets the load) and is ``None`` when no
point qualifies. The skill score is ``1 − MAE_model / MAE_persistence``
(``None`` when persistence is perfect, e.g. on a constant series).

Model files: ``<base>.joblib`` (the estimator, via joblib as scikit-learn
recommends) and ``<base>.json`` (metadata: scikit-learn version, feature
spec, model spec, trained-at, sample count, metrics). A model is reloaded only
when the metadata says the same format, the same scikit-learn version, the
same feature spec and the same model spec; otherwise it is retrained. The
files are as trusted as the store (a pickle runs code when loaded): keep the
state directory writable by meteremu only.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FORMAT = 1
FEATURE_VERSION = 1
TIME_FEATURES = ("tod_sin", "tod_cos", "dow_sin", "dow_cos")
DAY = 86400.0

CHUNK = 2048  # examples per partial_fit call: the stop flag's granularity
BUILD_SLICE = 4096  # examples built at once (bounds the temporaries)
PATIENCE = 10  # epochs without improvement on the validation slice before stopping
TOLERANCE = 1e-4  # relative improvement that counts
VALIDATION_FRACTION = 0.1
MAX_VALIDATION = 5000
MAX_TEST = 10000  # held-out windows scored at most (a random subset beyond)
MIN_TRAIN = 50  # training examples needed at least
MIN_TEST = 10  # held-out examples needed at least


class NotEnoughData(Exception):
    """Too little (contiguous) data to train and test a model yet."""


class TrainingCancelled(Exception):
    """The stop flag was set (the service is stopping)."""


# -- series -------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """Values on a regular grid: ``values[i]`` is at ``start + i · resolution``; NaN = missing."""

    start: float
    resolution: float
    values: np.ndarray

    def times(self) -> np.ndarray:
        return self.start + np.arange(len(self.values)) * self.resolution

    @property
    def samples(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.values)))


def fill_gaps(values: np.ndarray, max_steps: int) -> np.ndarray:
    """Interpolate runs of at most ``max_steps`` NaNs between known values, in place."""
    nan = np.isnan(values)
    if max_steps <= 0 or not nan.any() or nan.all():
        return values
    positions = np.arange(len(values))
    known = np.flatnonzero(~nan)
    filled = np.interp(positions, known, values[known])
    starts = nan & ~np.concatenate(([False], nan[:-1]))
    run_id = np.cumsum(starts) * nan
    lengths = np.bincount(run_id)[run_id]
    inside = (positions > known[0]) & (positions < known[-1])
    fill = nan & inside & (lengths <= max_steps)
    values[fill] = filled[fill]
    return values


def regrid(ts: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray,
           resolution: float, max_gap: float = 0.0) -> Series:
    """Put ``(ts, value)`` samples on the grid ``k · resolution`` (mean per cell), fill short gaps."""
    t = np.asarray(ts, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.size == 0:
        return Series(0.0, resolution, np.empty(0))
    k = np.round(t / resolution).astype(np.int64)
    k0 = int(k.min())
    index = k - k0
    size = int(index.max()) + 1
    sums = np.bincount(index, weights=v, minlength=size)
    counts = np.bincount(index, minlength=size)
    grid = np.full(size, np.nan)
    has = counts > 0
    grid[has] = sums[has] / counts[has]
    fill_gaps(grid, int(math.floor(max_gap / resolution + 1e-9)))
    return Series(k0 * resolution, resolution, grid)


# -- features -----------------------------------------------------------------


def _utc_offset(t: float, tz: tzinfo | None) -> float:
    moment = datetime.fromtimestamp(t, tz) if tz is not None else datetime.fromtimestamp(t).astimezone()
    offset = moment.utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


def time_features(ts: np.ndarray | Sequence[float], tz: tzinfo | None = None) -> np.ndarray:
    """``(n, 4)``: sin/cos of the local time of day and of the (continuous) day of the week.

    ``tz=None`` is the process's local time zone, as the simulator uses.
    """
    t = np.asarray(ts, dtype=np.float64)
    if t.size == 0:
        return np.empty((0, 4))
    hours = np.floor(t / 3600.0)
    unique, inverse = np.unique(hours, return_inverse=True)
    offsets = np.array([_utc_offset(h * 3600.0, tz) for h in unique])[inverse]
    local = t + offsets
    day_fraction = np.mod(local, DAY) / DAY
    week_fraction = (np.mod(np.floor(local / DAY) + 3, 7) + day_fraction) / 7  # epoch day 0 was a Thursday
    angle_d = 2 * np.pi * day_fraction
    angle_w = 2 * np.pi * week_fraction
    return np.column_stack((np.sin(angle_d), np.cos(angle_d), np.sin(angle_w), np.cos(angle_w)))


def feature_spec(window: int, horizon: int, resolution: float) -> dict[str, Any]:
    """What the model's inputs and outputs mean; a saved model is reused only if this matches."""
    return {"version": FEATURE_VERSION, "window": window, "horizon": horizon,
            "resolution": float(resolution), "inputs": "total W, standardised",
            "time": list(TIME_FEATURES), "time_of": "first forecast step, local time",
            "target": "change from the last input, standardised"}


def model_spec(hidden_layers: Sequence[int]) -> dict[str, Any]:
    return {"type": "MLPRegressor", "hidden_layers": [int(h) for h in hidden_layers],
            "activation": "relu", "solver": "adam"}


def example_starts(values: np.ndarray, window: int, horizon: int) -> np.ndarray:
    """Indices ``i`` where ``values[i : i + window + horizon]`` has no NaN."""
    length = window + horizon
    if len(values) < length:
        return np.empty(0, dtype=np.int64)
    cum = np.concatenate(([0], np.cumsum(np.isnan(values))))
    return np.flatnonzero(cum[length:] - cum[:-length] == 0)


def build_inputs(series: Series, starts: np.ndarray, window: int, mean: float, std: float,
                 tz: tzinfo | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(X, last)``: standardised windows plus time features, and each window's last value.

    Built in slices so the float64 temporaries stay a few MB whatever the count.
    """
    view = sliding_window_view(series.values, window)
    x = np.empty((len(starts), window + len(TIME_FEATURES)), dtype=np.float32)
    last = np.empty(len(starts), dtype=np.float64)
    for begin in range(0, len(starts), BUILD_SLICE):
        chosen = starts[begin:begin + BUILD_SLICE]
        rows = slice(begin, begin + len(chosen))
        windows = view[chosen]
        last[rows] = windows[:, -1]
        x[rows, :window - 1] = (windows[:, :-1] - windows[:, -1:]) / std
        x[rows, window - 1] = (windows[:, -1] - mean) / std
        x[rows, window:] = time_features(series.start + (chosen + window) * series.resolution, tz)
    return x, last


def targets(series: Series, starts: np.ndarray, window: int, horizon: int) -> np.ndarray:
    """``(n, horizon)``: the actual values after each window."""
    return np.array(sliding_window_view(series.values, horizon)[starts + window], dtype=np.float64)


# -- baselines and metrics ----------------------------------------------------


def persistence(last: np.ndarray, horizon: int) -> np.ndarray:
    """Every future step equals the last observed value."""
    return np.repeat(np.asarray(last, dtype=np.float64)[:, None], horizon, axis=1)


def seasonal_naive(series: Series, starts: np.ndarray, window: int, horizon: int,
                   period: float = DAY) -> np.ndarray:
    """Every future step equals the value ``period`` earlier (NaN where that is unknown)."""
    steps = int(round(period / series.resolution))
    index = (np.asarray(starts)[:, None] + window + np.arange(horizon)[None, :]) - steps
    out = np.full(index.shape, np.nan)
    ok = index >= 0
    out[ok] = series.values[index[ok]]
    return out


def error_metrics(actual: Any, predicted: Any, mape_floor: float = 50.0) -> dict[str, Any] | None:
    """MSE (W²), MAE (W), MAPE (%, only where ``|actual| >= mape_floor``) and the point count ``n``.

    Points where either value is missing (NaN) are left out; ``None`` if none is left.
    """
    a = np.asarray(actual, dtype=np.float64).ravel()
    p = np.asarray(predicted, dtype=np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(p)
    n = int(ok.sum())
    if n == 0:
        return None
    if n < len(a):
        a, p = a[ok], p[ok]
    err = np.abs(p - a)  # few temporaries: this runs on up to MAX_TEST × horizon points
    big = np.abs(a) >= max(mape_floor, 1e-9)
    mape = float(np.mean(err[big] / np.abs(a[big])) * 100) if big.any() else None
    return {"mse": float(np.dot(err, err) / n), "mae": float(err.mean()), "mape": mape, "n": n}


def skill_score(model: dict[str, Any] | None, baseline: dict[str, Any] | None) -> float | None:
    """``1 − MAE_model / MAE_baseline``; ``None`` if undefined (a perfect baseline)."""
    if model is None or baseline is None or not baseline["mae"] > 0:
        return None
    return 1.0 - model["mae"] / baseline["mae"]


SHRINK_GRID = np.linspace(0.0, 1.0, 21)


def fit_shrink(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per forecast step, the factor in [0, 1] (steps of 0.05) that minimises the MAE of
    ``factor · predicted`` against ``actual`` (both changes from the last value).

    The network is trained on squared error, so where the future is a coin
    toss (an appliance may switch on or not) it predicts the *mean* change,
    which is a worse bet than "no change" by absolute error. Fitted on the
    validation slice, never on the held-out test data.
    """
    errors = np.empty((len(SHRINK_GRID), predicted.shape[1]))
    for i, factor in enumerate(SHRINK_GRID):  # a loop, not one (grid × n × horizon) array
        errors[i] = np.abs(factor * predicted - actual).mean(axis=0)
    return SHRINK_GRID[np.argmin(errors, axis=0)]


# -- the model ----------------------------------------------------------------


@dataclass
class FittedModel:
    """A trained estimator and its metadata (JSON-able)."""

    estimator: Any
    meta: dict[str, Any]

    @property
    def window(self) -> int:
        return int(self.meta["features"]["window"])

    @property
    def horizon(self) -> int:
        return int(self.meta["features"]["horizon"])

    @property
    def resolution(self) -> float:
        return float(self.meta["features"]["resolution"])

    def predict_scaled(self, x: np.ndarray) -> np.ndarray:
        """The network's raw output: standardised changes from the last input."""
        return np.asarray(self.estimator.predict(x), dtype=np.float64).reshape(len(x), self.horizon)

    def predict_changes(self, x: np.ndarray) -> np.ndarray:
        """Standardised changes from the last input, shrunk per step (see :func:`fit_shrink`)."""
        shrink = np.asarray(self.meta.get("shrink") or np.ones(self.horizon), dtype=np.float64)
        return self.predict_scaled(x) * shrink

    def forecast(self, ts: Sequence[float], values: Sequence[float],
                 tz: tzinfo | None = None) -> list[tuple[float, float]]:
        """The next ``horizon`` samples after the last of ``(ts, values)``; ``[]`` if the
        last ``window`` samples are not contiguous (after filling short gaps)."""
        series = regrid(ts, values, self.resolution, float(self.meta.get("max_gap", 0.0)))
        window = self.window
        if len(series.values) < window or np.isnan(series.values[-window:]).any():
            return []
        starts = np.array([len(series.values) - window])
        mean, std = float(self.meta["mean"]), float(self.meta["std"])
        x, last = build_inputs(series, starts, window, mean, std, tz)
        out = last[0] + self.predict_changes(x)[0] * std
        t_last = series.start + (len(series.values) - 1) * series.resolution
        return [(t_last + (k + 1) * series.resolution, float(out[k])) for k in range(self.horizon)]


def _never() -> bool:
    return False


def _ignore(_: float) -> None:
    pass


def train(ts: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, options: Any,
          now: float, progress: Callable[[float], None] = _ignore,
          should_stop: Callable[[], bool] = _never, tz: tzinfo | None = None) -> FittedModel:
    """Fit, evaluate against the baselines and return the model (not saved).

    ``options`` is a :class:`~meteremu.forecast.ForecastOptions` (or anything
    with its attributes). Raises :class:`NotEnoughData` or
    :class:`TrainingCancelled`. Runs in the trainer's thread: no reactor here.
    """
    import sklearn
    from sklearn.neural_network import MLPRegressor
    from threadpoolctl import threadpool_limits

    done = 0.0

    def report(fraction: float) -> None:  # monotonic, rounded: it is shown to people
        nonlocal done
        fraction = round(min(1.0, fraction), 4)
        if fraction > done:
            done = fraction
            progress(fraction)

    window, horizon, resolution = int(options.window), int(options.horizon), float(options.resolution)
    series = regrid(ts, values, resolution, options.max_gap)
    n = len(series.values)
    split = int(n * (1 - options.test_fraction))
    starts = example_starts(series.values, window, horizon)
    train_starts = starts[starts + window + horizon <= split]
    test_starts = starts[starts + window >= split]
    if len(train_starts) < MIN_TRAIN or len(test_starts) < MIN_TEST:
        raise NotEnoughData(
            f"{series.samples} samples give {len(train_starts)} training and {len(test_starts)} test "
            f"examples of {window}+{horizon} contiguous samples; need {MIN_TRAIN} and {MIN_TEST}")
    history = series.values[:split]
    mean = float(np.nanmean(history))
    std = float(np.nanstd(history))
    std = std if std >= 1.0 else 1.0  # a flat series: do not blow up its tiny wiggles
    rng = np.random.default_rng(options.random_state)

    n_val = min(MAX_VALIDATION, max(1, int(len(train_starts) * VALIDATION_FRACTION)))
    fit_starts, val_starts = train_starts[:-n_val], train_starts[-n_val:]
    if len(fit_starts) < n_val:  # little data: validate on what we fit
        fit_starts = train_starts
    if len(fit_starts) > options.max_samples:
        fit_starts = np.sort(rng.choice(fit_starts, options.max_samples, replace=False))
    if len(test_starts) > MAX_TEST:
        test_starts = np.sort(rng.choice(test_starts, MAX_TEST, replace=False))

    def scaled_targets(chosen: np.ndarray, last: np.ndarray) -> np.ndarray:
        return ((targets(series, chosen, window, horizon) - last[:, None]) / std).astype(np.float32)

    estimator = MLPRegressor(hidden_layer_sizes=tuple(options.hidden_layers), activation="relu",
                             solver="adam", random_state=options.random_state,
                             learning_rate_init=1e-3, alpha=1e-4, batch_size="auto")
    epochs = 0
    with threadpool_limits(limits=1):
        x_fit, last_fit = build_inputs(series, fit_starts, window, mean, std, tz)
        y_fit = scaled_targets(fit_starts, last_fit)
        x_val, last_val = build_inputs(series, val_starts, window, mean, std, tz)
        y_val = scaled_targets(val_starts, last_val)
        if horizon == 1:
            y_fit, y_val = y_fit.ravel(), y_val.ravel()
        report(0.05)
        best, best_weights, waited = math.inf, None, 0
        count = len(x_fit)
        best_epoch = 0
        for epoch in range(options.max_iter):
            order = rng.permutation(count)
            # Progress against the earliest end early stopping allows (it moves on
            # while the loss keeps improving; report() keeps the bar from going back).
            expected = min(options.max_iter, best_epoch + PATIENCE + 1)
            for begin in range(0, count, CHUNK):
                if should_stop():
                    raise TrainingCancelled("stopped")
                chosen = order[begin:begin + CHUNK]
                estimator.partial_fit(x_fit[chosen], y_fit[chosen])
                report(0.05 + 0.9 * (epoch + min(count, begin + CHUNK) / count) / expected)
            epochs = epoch + 1
            loss = float(np.mean((estimator.predict(x_val).reshape(y_val.shape) - y_val) ** 2))
            if loss < best - TOLERANCE * abs(best) or best_weights is None:
                best, waited, best_epoch = loss, 0, epoch
                best_weights = ([c.copy() for c in estimator.coefs_], [i.copy() for i in estimator.intercepts_])
            else:
                waited += 1
                if waited >= PATIENCE:
                    break
        if best_weights is not None:
            estimator.coefs_, estimator.intercepts_ = best_weights
        report(0.95)
        del x_fit, y_fit, last_fit  # free them before scoring

        model = FittedModel(estimator, {})
        model.meta = {"features": feature_spec(window, horizon, resolution)}
        shrink = fit_shrink(model.predict_scaled(x_val), y_val.reshape(len(x_val), horizon))
        model.meta["shrink"] = shrink.tolist()
        x_test, last_test = build_inputs(series, test_starts, window, mean, std, tz)
        actual = targets(series, test_starts, window, horizon)
        predicted = last_test[:, None] + model.predict_changes(x_test) * std
    seasonal = seasonal_naive(series, test_starts, window, horizon)
    rows = np.isfinite(seasonal).all(axis=1)
    floor = options.mape_floor
    scores = {
        "model": error_metrics(actual, predicted, floor),
        "persistence": error_metrics(actual, persistence(last_test, horizon), floor),
        "seasonal_naive": error_metrics(actual[rows], seasonal[rows], floor) if rows.any() else None,
    }
    times = series.times()
    valid = ~np.isnan(series.values)
    model.meta = {
        "format": FORMAT,
        "id": uuid.uuid4().hex,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "features": feature_spec(window, horizon, resolution),
        "model": model_spec(options.hidden_layers),
        "trained_at": float(now),
        "samples": series.samples,
        "train_examples": int(len(fit_starts)),
        "test_examples": int(len(test_starts)),
        "epochs": epochs,
        "data_start": float(times[valid][0]),
        "data_end": float(times[valid][-1]),
        "test_start": float(series.start + split * resolution),
        "mean": mean,
        "std": std,
        "shrink": [float(f) for f in shrink],
        "max_gap": float(options.max_gap),
        "mape_floor": float(floor),
        "metrics": scores,
        "skill": skill_score(scores["model"], scores["persistence"]),
    }
    report(1.0)
    return model


# -- model files --------------------------------------------------------------


def model_paths(base: str) -> tuple[str, str]:
    """``(<base>.joblib, <base>.json)``."""
    return base + ".joblib", base + ".json"


def save(model: FittedModel, base: str) -> None:
    """Write the estimator, then the metadata (each atomically); the metadata names the estimator."""
    import joblib

    weights, meta = model_paths(base)
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    joblib.dump({"id": model.meta["id"], "estimator": model.estimator}, weights + ".tmp")
    os.replace(weights + ".tmp", weights)
    with open(meta + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(model.meta, handle, indent=1, allow_nan=False)
    os.replace(meta + ".tmp", meta)


def load(base: str, features: dict[str, Any], spec: dict[str, Any]) -> tuple[FittedModel | None, str]:
    """Load a saved model if it is compatible; ``(None, why not)`` otherwise.

    Compatible: same format, same scikit-learn version, same feature spec and
    model spec. The metadata is checked *before* the estimator is unpickled.
    """
    import sklearn

    weights, meta_path = model_paths(base)
    try:
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except FileNotFoundError:
        return None, "no saved model"
    except (OSError, ValueError) as exc:
        return None, f"unreadable metadata ({exc})"
    if not isinstance(meta, dict):
        return None, "unreadable metadata"
    if meta.get("format") != FORMAT:
        return None, f"file format {meta.get('format')!r}, need {FORMAT}"
    if meta.get("sklearn") != sklearn.__version__:
        return None, f"saved with scikit-learn {meta.get('sklearn')}, running {sklearn.__version__}"
    if meta.get("features") != json.loads(json.dumps(features)):
        return None, "feature spec changed (window, horizon or resolution)"
    if meta.get("model") != json.loads(json.dumps(spec)):
        return None, "model spec changed (hidden_layers)"
    import joblib

    try:
        saved = joblib.load(weights)
    except Exception as exc:  # a torn or foreign file: retrain rather than fail
        return None, f"unreadable model file ({type(exc).__name__}: {exc})"
    if not isinstance(saved, dict) or saved.get("id") != meta.get("id"):
        return None, "model file does not match its metadata"
    return FittedModel(saved["estimator"], meta), "loaded"
