"""MQTT topic names, payloads, Home Assistant discovery configs, change detection.

Pure: no reactor, no sockets, no paho. The service (``service.py``) decides
*when* to publish; this module decides *what*.

Layout (``<base>`` = ``<prefix>/<source type>/<meter>``)::

    <prefix>/status                 online / offline (retained; offline is the Last Will)
    <base>/availability             online while the meter is fresh, else offline (retained)
    <base>/<parameter>              a plain number, e.g. meters/envoy/grid/a_act_power -> 2166.2
    <base>/state                    optional JSON with every parameter and the reading's time
    <discovery>/sensor/<node>_<meter>/<parameter>/config    Home Assistant discovery (retained)

Parameters: per phase ``a_``/``b_``/``c_`` + ``act_power`` (W), ``aprt_power``
(VA), ``voltage`` (V), ``current`` (A), ``pf``, ``freq`` (Hz),
``import_energy``/``export_energy`` (Wh); totals ``total_act_power``,
``total_aprt_power``, ``total_current``, ``total_import_energy``,
``total_export_energy``; and the reading's extras (:func:`extra_param`), e.g.
``inverter_<serial>_power``, ``circuit_<name>_power``, ``pv_power``, ``gas_m3``.
Only phases the reading has are published.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from meteremu import __version__, control
from meteremu.control import Quality
from meteremu.meter import Freshness
from meteremu.reading import PHASE_NAMES, Reading

ONLINE = "online"
OFFLINE = "offline"
RESERVED = frozenset({"state", "availability", "status"})


class MeterLike(Protocol):
    name: str
    source_type: str


@dataclass(frozen=True)
class Param:
    """One published value: its topic suffix (``key``) and how Home Assistant should show it."""

    key: str
    name: str
    decimals: int | None  # None: up to 3 decimals, trailing zeros dropped
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = "measurement"
    options: tuple[str, ...] = ()  # device_class enum: the states Home Assistant may see


# (attribute, entity name, decimals, unit, device_class)
_PHASE_FIELDS = (
    ("act_power", "power", 1, "W", "power"),
    ("aprt_power", "apparent power", 1, "VA", "apparent_power"),
    ("voltage", "voltage", 1, "V", "voltage"),
    ("current", "current", 3, "A", "current"),
    ("pf", "power factor", 2, None, "power_factor"),
    ("freq", "frequency", 2, "Hz", "frequency"),
)
ENERGY_DECIMALS = 1


def _phase_params(letter: str) -> tuple[Param, ...]:
    return tuple(Param(f"{letter}_{attr}", f"Phase {letter.upper()} {label}", decimals, unit, cls)
                 for attr, label, decimals, unit, cls in _PHASE_FIELDS)


PHASE_PARAMS = {letter: _phase_params(letter) for letter in PHASE_NAMES}
TOTAL_POWER = Param("total_act_power", "Total power", 1, "W", "power")
TOTAL_APPARENT = Param("total_aprt_power", "Total apparent power", 1, "VA", "apparent_power")
TOTAL_CURRENT = Param("total_current", "Total current", 3, "A", "current")
TOTAL_IMPORT = Param("total_import_energy", "Import energy", ENERGY_DECIMALS, "Wh", "energy", "total_increasing")
TOTAL_EXPORT = Param("total_export_energy", "Export energy", ENERGY_DECIMALS, "Wh", "energy", "total_increasing")


def energy_params(letter: str) -> tuple[Param, Param]:
    up = letter.upper()
    return (Param(f"{letter}_import_energy", f"Phase {up} import energy", ENERGY_DECIMALS, "Wh", "energy",
                  "total_increasing"),
            Param(f"{letter}_export_energy", f"Phase {up} export energy", ENERGY_DECIMALS, "Wh", "energy",
                  "total_increasing"))


FIXED_KEYS = frozenset(
    [p.key for params in PHASE_PARAMS.values() for p in params]
    + [p.key for letter in PHASE_NAMES for p in energy_params(letter)]
    + [p.key for p in (TOTAL_POWER, TOTAL_APPARENT, TOTAL_CURRENT, TOTAL_IMPORT, TOTAL_EXPORT)])


def slug(text: str) -> str:
    """``[a-z0-9_-]`` only (Home Assistant ids; safe as a topic level)."""
    return re.sub(r"[^a-z0-9_-]+", "_", text.lower()).strip("_") or "_"


def topic_level(text: str) -> str:
    """``text`` as one topic level: no ``/``, no wildcards, no NUL."""
    return re.sub(r"[/+#\x00]", "_", text) or "_"


_KIND_POWER = ("inverter", "circuit")
_WORDS = {"pv": "PV", "ev": "EV", "ac": "AC", "dc": "DC"}

# (suffix of the key, suffix dropped from the entity name, unit, device_class, state_class, decimals)
_SUFFIXES: tuple[tuple[str, bool, str | None, str | None, str | None, int | None], ...] = (
    ("_power", False, "W", "power", "measurement", 1),
    ("_w", True, "W", "power", "measurement", 1),
    ("_wh", True, "Wh", "energy", "total_increasing", 1),
    ("_kwh", True, "kWh", "energy", "total_increasing", 3),
    ("_m3", True, "m³", None, "total_increasing", 3),  # device_class from the key: gas, water, volume
    ("_var", True, "var", "reactive_power", "measurement", 1),
    ("_bar", True, "bar", "pressure", "measurement", 2),
    ("_lph", True, "L/h", None, "measurement", 1),
    ("_hours", False, "h", "duration", "total_increasing", 0),
    ("_share", False, None, None, "measurement", 3),
)


def _entity_name(words: str) -> str:
    text = " ".join(_WORDS.get(w, w) for w in words.replace(".", " ").replace("_", " ").split())
    return text[:1].upper() + text[1:] if text else "Value"


def extra_param(key: str) -> Param:
    """How an extras key of a Reading is published (topic suffix, unit, Home Assistant classes).

    * ``inverter.<serial>`` → ``inverter_<serial>_power``, ``circuit.<name>`` →
      ``circuit_<name>_power`` (W); keys already written that way stay as they are;
    * the unit comes from the key's suffix: ``_power``/``_w`` W, ``_wh`` Wh and
      ``_kwh`` kWh (energy counters), ``_m3`` m³ (gas, water or volume
      counter), ``_var`` var, ``_bar`` bar, ``_lph`` L/h, ``temp…_c`` °C,
      ``temp…_k`` K, ``_hours`` h, ``_share`` a ratio; ``gas`` alone is m³;
    * anything else (``tariff``, ``power_failures``…) is a plain number.

    ``<key>.<channel>`` (a second gas meter…) becomes ``<key>_<channel>``. Keys
    are lower-cased and reduced to ``[a-z0-9_-]``; one that would clash with a
    fixed parameter or ``state``/``availability`` gets an ``extra_`` prefix.
    """
    head, dot, tail = key.partition(".")
    if dot and head in _KIND_POWER and tail:
        return Param(f"{head}_{slug(tail)}_power", f"{head.capitalize()} {tail} power", 1, "W", "power")
    base = slug(head)
    param_key = f"{base}_{slug(tail)}" if dot and tail else base
    if param_key in RESERVED or param_key in FIXED_KEYS:
        param_key = f"extra_{param_key}"
    channel = f" {tail}" if dot and tail else ""
    if base == "gas":
        return Param(param_key, f"Gas{channel}", 3, "m³", "gas", "total_increasing")
    if "temp" in base and base.endswith(("_c", "_k")):
        celsius = base.endswith("_c")
        return Param(param_key, _entity_name(base[:-2]) + channel, 1, "°C" if celsius else "K",
                     "temperature" if celsius else None)
    for suffix, drop, unit, device_class, state_class, decimals in _SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            if suffix == "_m3":
                device_class = "gas" if base.startswith("gas") else "water" if base.startswith("water") else "volume"
            words = base[: -len(suffix)] if drop else base
            return Param(param_key, _entity_name(words) + channel, decimals, unit, device_class, state_class)
    return Param(param_key, _entity_name(base) + channel, None)


def reading_values(reading: Reading, energy: Any) -> list[tuple[Param, float]]:
    """Every parameter of a reading (plus the meter's energy counters), finite values only."""
    out: list[tuple[Param, float]] = []
    phases = reading.phases[: len(PHASE_NAMES)]
    for i, phase in enumerate(phases):
        letter = PHASE_NAMES[i]
        for param, (attr, *_rest) in zip(PHASE_PARAMS[letter], _PHASE_FIELDS, strict=True):
            out.append((param, getattr(phase, attr)))
    if phases:
        out.append((TOTAL_POWER, reading.total_act_power))
        out.append((TOTAL_APPARENT, reading.total_aprt_power))
        out.append((TOTAL_CURRENT, reading.total_current))
        counters = list(energy.phases)[: len(phases)]
        for i, counter in enumerate(counters):
            imp, exp = energy_params(PHASE_NAMES[i])
            out.append((imp, counter.import_wh))
            out.append((exp, counter.export_wh))
        out.append((TOTAL_IMPORT, energy.total_import_wh))
        out.append((TOTAL_EXPORT, energy.total_export_wh))
    seen = {p.key for p, _ in out}
    for key in sorted(reading.extras):
        param = extra_param(key)
        if param.key in seen:
            continue
        seen.add(param.key)
        out.append((param, reading.extras[key]))
    return [(p, float(v)) for p, v in out if isinstance(v, int | float) and math.isfinite(v)]


def meter_values(meter: Any) -> list[tuple[Param, float | str]]:
    """:func:`reading_values` of a Meter's latest reading (empty before the first one), then
    :func:`control_values` when the meter has a controller."""
    if meter.latest is None:
        return []
    values: list[tuple[Param, float | str]] = list(reading_values(meter.latest, meter.energy))
    return values + control_values(meter)


QUALITY = Param("control_quality", "Control quality", None, None, "enum", None,
                options=tuple(q.value for q in Quality))
BATTERY_STATES = ("ok", "full", "empty")


def _tens(value: float) -> float:
    """Battery watts to 10 W: a battery's output wanders by a few watts every poll; HA need not hear it."""
    return float(round(value / 10.0) * 10)


def control_values(meter: Any) -> list[tuple[Param, float | str]]:
    """The meter's control quality and, per battery (MAC or IP), power, target, served value, share, state.

    Low churn (AstraMeter removed a per-second "last seen" that flooded the
    Home Assistant recorder, specs §5): watts are rounded to 10 W, the share
    to whole percent, the state is only ok / full / empty, and the exporter
    publishes a topic only when its payload changes.
    """
    controller = control.controller_for(meter)
    if controller is None:
        return []
    out: list[tuple[Param, float | str]] = [(QUALITY, controller.quality().value)]
    for battery in controller.overview()["batteries"]:
        key, name = slug(battery["key"]), f"Battery {battery['key']}"
        if battery["power"] is not None:
            out.append((Param(f"battery_{key}_power", f"{name} power", 0, "W", "power"), _tens(battery["power"])))
        if battery["target"] is not None:
            out.append((Param(f"battery_{key}_target", f"{name} target", 0, "W", "power"),
                        _tens(battery["target"])))
        out.append((Param(f"battery_{key}_served", f"{name} served", 0, "W", "power"), _tens(battery["served"])))
        out.append((Param(f"battery_{key}_share", f"{name} share", 0, "%"), float(round(battery["share"] * 100))))
        state = battery["state"] if battery["state"] in ("full", "empty") else "ok"
        out.append((Param(f"battery_{key}_state", f"{name} state", None, None, "enum", None,
                          options=BATTERY_STATES), state))
    return out


def format_value(value: float | str, decimals: int | None) -> str:
    """A plain number with fixed decimals (``230.0``, ``-244.0``); never ``-0.0``.

    ``decimals=None`` (values of unknown kind): at most 3 decimals, no trailing zeros (``2``, ``0.5``).
    A text state (an enum sensor) is published as it is.
    """
    if isinstance(value, str):
        return value
    text = f"{value:.{3 if decimals is None else decimals}f}"
    if decimals is None and "." in text:
        text = text.rstrip("0").rstrip(".")
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    return text


def json_number(value: float, decimals: int | None) -> float:
    rounded = round(value, 3 if decimals is None else decimals)
    return 0.0 if rounded == 0 else rounded


def json_state(reading: Reading, values: list[tuple[Param, float | str]]) -> str:
    """``{"time": <epoch s>, "<param>": <number or text>, …}`` (compact, keys in publish order)."""
    body: dict[str, Any] = {"time": reading.measured_at}
    for param, value in values:
        body[param.key] = value if isinstance(value, str) else json_number(value, param.decimals)
    return json.dumps(body, separators=(",", ":"))


def availability(freshness: Freshness) -> str:
    """``online`` only while fresh: a stale or down meter's last value is not current."""
    return ONLINE if freshness is Freshness.FRESH else OFFLINE


@dataclass(frozen=True)
class Layout:
    """Topic names and discovery configs for one exporter."""

    prefix: str = "meters"
    discovery_prefix: str = "homeassistant"
    node_id: str = "meteremu"
    qos: int = 0

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/status"

    def base(self, meter: MeterLike) -> str:
        return f"{self.prefix}/{topic_level(meter.source_type)}/{topic_level(meter.name)}"

    def value_topic(self, meter: MeterLike, key: str) -> str:
        return f"{self.base(meter)}/{key}"

    def availability_topic(self, meter: MeterLike) -> str:
        return f"{self.base(meter)}/availability"

    def state_topic(self, meter: MeterLike) -> str:
        return f"{self.base(meter)}/state"

    def device_id(self, meter: MeterLike) -> str:
        return f"{self.node_id}_{slug(meter.name)}"

    def unique_id(self, meter: MeterLike, key: str) -> str:
        return f"{self.device_id(meter)}_{key}"

    def config_topic(self, meter: MeterLike, key: str) -> str:
        return f"{self.discovery_prefix}/sensor/{self.device_id(meter)}/{key}/config"

    def device(self, meter: MeterLike) -> dict[str, Any]:
        """One Home Assistant device per meter."""
        return {
            "identifiers": [self.device_id(meter)],
            "name": meter.name,
            "manufacturer": "meteremu",
            "model": f"{meter.source_type} meter",
            "sw_version": __version__,
        }

    def config(self, meter: MeterLike, param: Param) -> dict[str, Any]:
        """The discovery config of one parameter of one meter."""
        config: dict[str, Any] = {
            "name": param.name,
            "unique_id": self.unique_id(meter, param.key),
            "state_topic": self.value_topic(meter, param.key),
            "availability": [
                {"topic": self.status_topic},
                {"topic": self.availability_topic(meter)},
            ],
            "availability_mode": "all",
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
        }
        if param.device_class is not None:
            config["device_class"] = param.device_class
        if param.state_class is not None:
            config["state_class"] = param.state_class
        if param.unit is not None:
            config["unit_of_measurement"] = param.unit
        if param.options:
            config["options"] = list(param.options)
        if param.decimals is not None:
            config["suggested_display_precision"] = 0 if param.unit == "Wh" else min(param.decimals, 2)
        if self.qos:
            config["qos"] = self.qos
        config["device"] = self.device(meter)
        config["origin"] = {"name": "meteremu", "sw_version": __version__}
        return config

    def config_payload(self, meter: MeterLike, param: Param) -> str:
        return json.dumps(self.config(meter, param), separators=(",", ":"), ensure_ascii=False)


class ChangeTracker:
    """Which topics need publishing: changed payloads, or all when forced or due for a refresh."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, float]] = {}

    def changes(self, payloads: Mapping[str, str], now: float, force: bool = False,
                refresh: float = 0.0) -> list[tuple[str, str]]:
        """The ``(topic, payload)`` pairs to publish now; they count as published."""
        out = []
        for topic, payload in payloads.items():
            last = self._last.get(topic)
            if (force or last is None or last[0] != payload
                    or (refresh > 0 and now - last[1] >= refresh)):
                out.append((topic, payload))
                self._last[topic] = (payload, now)
        return out

    def forget(self, topic: str) -> None:
        """A publish failed: publish this topic again next time."""
        self._last.pop(topic, None)

    def clear(self) -> None:
        self._last.clear()


class RateLimit:
    """At most one publish per ``min_interval`` (seconds) per meter."""

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self.last: float | None = None

    def delay(self, now: float) -> float:
        if self.last is None:
            return 0.0
        return max(0.0, self.last + self.min_interval - now)

    def mark(self, now: float) -> None:
        self.last = now
