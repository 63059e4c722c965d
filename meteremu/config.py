"""YAML configuration → frozen dataclasses, with errors a person can act on.

Every problem becomes one :class:`ConfigError` naming the file, the key path
(``meters.grid.source.interval``) and what was expected; ``tap`` prints it as
one line and exits non-zero. Validation is generic: option dataclasses live
beside the code they configure (a source owns its options), and this module
reads their type annotations. Pure: no reactor, no sockets.

Supported annotation shapes: ``bool``, ``int``, ``float``, ``str``,
``Duration``, ``Literal[...]``, ``X | None``, unions of a literal and a
dataclass, ``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses.
An optional ``validate()`` method on a dataclass returns ``[(field, why)]``
for rules that span fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from meteremu.configtypes import DURATION, Duration
from meteremu.connections import ConnectionLimits
from meteremu.forecast import ForecastOptions  # a plain dataclass: no numpy/sklearn

# --------------------------------------------------------------------------
# errors


class ConfigError(Exception):
    """A configuration problem: which file, which key, what was expected."""

    def __init__(self, file: str, key: str, why: str) -> None:
        super().__init__(f"{file}: {key}: {why}")
        self.file, self.key, self.why = file, key, why


class _Invalid(Exception):
    def __init__(self, key: str, why: str) -> None:
        super().__init__(key, why)
        self.key, self.why = key, why


# --------------------------------------------------------------------------
# scalars

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d)")


def parse_duration(value: Any) -> float:
    """``500ms``, ``2s``, ``10m``, ``1h``, ``1h30m``, or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        try:
            if value < 0 or not math.isfinite(value):
                raise ValueError(value)
            return float(value)
        except OverflowError:
            raise ValueError(value) from None
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            raise ValueError(value)
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(value)
    return total


class _Substituted(str):
    """A string that came (at least partly) from ``${VAR}``: may be read as a number."""


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def substitute_env(text: str, env: typing.Mapping[str, str], key: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; a missing VAR without default is an error.

    As in the shell, the default also replaces a variable that is set but empty.
    """
    if "${" not in text:
        return text

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        if name in env:
            return ""
        raise _Invalid(key, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")

    return _Substituted(_ENV.sub(repl, text))


_MAX_INT = 2**63

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40


def _describe(value: Any) -> str:
    """A short, safe rendering of a bad value (huge ints and deep YAML included)."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------
# generic conversion


def _join(key: str, sub: str | int) -> str:
    if isinstance(sub, int):
        return f"{key}[{sub}]"
    return f"{key}.{sub}" if key else sub


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(hint)
        return "a duration like 500ms, 2s, 10m or 1h" if DURATION in meta else _type_name(base)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if origin in (tuple, list):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    if hint is float:
        return "a number"
    if hint is int:
        return "a whole number"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    return str(hint)


def _scalar_from_env(value: Any) -> Any:
    """A substituted string is read as a YAML scalar when a non-string is wanted."""
    if isinstance(value, _Substituted):
        try:
            return yaml.load(str(value), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            return str(value)
    return value


def _expand(value: Any, env: typing.Mapping[str, str], key: str) -> Any:
    """Substitute ``${VAR}`` once, whatever type the field has."""
    if isinstance(value, str) and not isinstance(value, _Substituted):
        return substitute_env(value, env, key)
    return value


def convert(value: Any, hint: Any, key: str, env: typing.Mapping[str, str]) -> Any:
    """Convert one YAML value to ``hint``, or raise ``_Invalid(key, why)``."""
    value = _expand(value, env, key)
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(hint)
        if DURATION in meta:
            value = _scalar_from_env(value)
            try:
                return parse_duration(value)
            except ValueError:
                raise _Invalid(key, f"expected a duration like 500ms, 2s, 10m or 1h; got {_describe(value)}") from None
        return convert(value, base, key, env)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(value, option, key, env)
            except _Invalid as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        deepest = max(errors, key=lambda e: len(e.key))
        if deepest.key != key:
            raise deepest
        wanted = [e.why.split("; got ")[0].removeprefix("expected ") for e in errors]
        hints = [e.why[e.why.index("; did you mean"):] for e in errors if "; did you mean" in e.why]
        raise _Invalid(key, f"expected {' or '.join(wanted)}; got {_describe(value)}{''.join(hints[:1])}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            value = _scalar_from_env(value)
        if value in allowed and not isinstance(value, bool):
            return allowed[allowed.index(value)]
        near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint_txt = f"; did you mean {near[0]!r}?" if near else ""
        raise _Invalid(key, f"expected one of {', '.join(map(str, allowed))}; got {_describe(value)}{hint_txt}")
    if origin in (tuple, list):
        args = typing.get_args(hint)
        if not isinstance(value, list):
            raise _Invalid(key, f"expected a list; got {_describe(value)}")
        item = args[0] if args else Any
        return tuple(convert(v, item, _join(key, i), env) for i, v in enumerate(value))
    if origin is dict:
        _, item = typing.get_args(hint)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _Invalid(key, f"expected a mapping; got {_describe(value)}")
        return {str(k): convert(v, item, _join(key, str(k)), env) for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, key, env)
    if hint is Any:
        return value
    if hint is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return getattr(value, "text", str(value))  # as written: mac 001122334455, ver 1.10
        raise _Invalid(key, f"expected a string; got {_describe(value)}")
    value = _scalar_from_env(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > _MAX_INT:
                raise _Invalid(key, f"expected a whole number between -2^63 and 2^63; got {_describe(value)}")
            return int(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > _MAX_INT:
                raise _Invalid(key, f"expected a number between -2^63 and 2^63; got {_describe(value)}")
            return float(value)
    raise _Invalid(key, f"expected {_type_name(hint)}; got {_describe(value)}")


def check_keys(data: dict[Any, Any], valid: typing.Iterable[str], key: str) -> None:
    """Every key must be a valid one; an unknown key names the closest valid key."""
    valid = list(valid)
    for name in data:
        if str(name) not in valid:
            near = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
            hint_txt = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(valid)}"
            raise _Invalid(_join(key, str(name)), f"unknown key{hint_txt}")


def build(cls: type, data: Any, key: str, env: typing.Mapping[str, str]) -> Any:
    """Build dataclass ``cls`` from a YAML mapping, checking every key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _Invalid(key, f"expected a mapping; got {_describe(data)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(data, sorted(fields), key)
    kwargs = {}
    for name, f in fields.items():
        sub = _join(key, name)
        if name in data:
            kwargs[name] = convert(data[name], hints[name], sub, env)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _Invalid(sub, f"required key is missing ({_type_name(hints[name])})")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        for name, why in check():
            raise _Invalid(_join(key, name), why if why.startswith("expected") else f"expected {why}")
    return obj


# --------------------------------------------------------------------------
# the top-level shape (design.md §5)


@dataclass(frozen=True)
class LoggingOptions:
    level: Literal["debug", "info", "warn", "error", "critical"] = "info"


@dataclass(frozen=True)
class CorsOptions:
    enabled: bool = False
    origins: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class ServerOptions:
    host: str = "0.0.0.0"
    http_port: int = 80
    cors: CorsOptions = CorsOptions()
    # Names in Host the dashboard, /admin and /metrics answer besides this
    # machine's own names and addresses (meteremu.web.guard); "*" allows any.
    allowed_hosts: tuple[str, ...] = ()
    # When set, the dashboard, /admin and /metrics also need this token.
    admin_token: str | None = field(default=None, repr=False)
    # Addresses of a reverse proxy that serves the dashboard under a path
    # prefix and authenticates users itself (Home Assistant ingress:
    # 172.30.32.2). Its requests carrying X-Ingress-Path skip the Host check
    # and the token; anyone else's do not.
    ingress_proxies: tuple[str, ...] = ()
    # Connection caps and deadlines (meteremu.connections): against slowloris
    # and floods of silent connections, for HTTP, WebSocket and Modbus TCP.
    max_connections: int = 512
    max_connections_per_ip: int = 64
    max_modbus_connections: int = 32
    header_timeout: Duration = 10.0
    idle_timeout: Duration = 60.0

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if not 0 <= self.http_port <= 65535:
            errors.append(("http_port", f"expected a port 0-65535; got {self.http_port}"))
        for address in self.ingress_proxies:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                errors.append(("ingress_proxies", f"expected IP addresses; got {address!r}"))
        for name in ("max_connections", "max_connections_per_ip", "max_modbus_connections"):
            if getattr(self, name) < 1:
                errors.append((name, f"expected a whole number of 1 or more; got {getattr(self, name)}"))
        for name in ("header_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                errors.append((name, "expected a duration above 0"))
        if self.admin_token is not None and len(self.admin_token) < 16:
            errors.append(("admin_token", "expected at least 16 characters (or leave it out)"))
        return errors

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(self.max_connections, self.max_connections_per_ip, self.max_modbus_connections,
                                self.header_timeout, self.idle_timeout)


@dataclass(frozen=True)
class StoreOptions:
    path: str = "state/meteremu.db"
    persist_interval: Duration = 30.0

    def validate(self) -> list[tuple[str, str]]:
        if self.persist_interval <= 0:
            return [("persist_interval", "expected a duration above 0")]
        return []


@dataclass(frozen=True)
class ReloadOptions:
    """Hot reload of ``conf_dir`` meter files."""

    enabled: bool = True
    debounce: Duration = 1.0
    poll_interval: Duration = 1.0

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.poll_interval <= 0:
            errors.append(("poll_interval", "expected a duration above 0"))
        return errors


@dataclass(frozen=True)
class PrometheusOptions:
    enabled: bool = True


@dataclass(frozen=True)
class ExportersOptions:
    """``exporters:``: prometheus is built in; the others come from the registry."""

    prometheus: PrometheusOptions = PrometheusOptions()
    others: dict[str, Any] = field(default_factory=dict)


def _exporters(data: Any, env: typing.Mapping[str, str]) -> ExportersOptions:
    from meteremu.exporters import option_types as exporter_types

    if data is None:
        return ExportersOptions()
    if not isinstance(data, dict):
        raise _Invalid("exporters", f"expected a mapping of exporter name to options; got {_describe(data)}")
    registry = exporter_types()
    known = ["prometheus", *registry]
    others = {}
    check_keys(data, known, "exporters")
    for name, body in data.items():
        key = _join("exporters", str(name))
        if name == "prometheus":
            continue
        options = build(registry[name], body, key, env)
        if getattr(options, "enabled", True):
            others[str(name)] = options
    return ExportersOptions(prometheus=build(PrometheusOptions, data.get("prometheus"), "exporters.prometheus", env),
                            others=others)


def _timezone(value: Any, exporters: ExportersOptions) -> str | None:
    """``timezone:`` (one home, one time zone); the InfluxDB exporter's own
    ``timezone`` (from before there was a global one) stands in for it."""
    if value is not None:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid("timezone", f"expected an IANA time zone like Europe/Amsterdam; got {_describe(value)}")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise _Invalid("timezone", f"expected an IANA time zone like Europe/Amsterdam; got {value!r}") from None
    influx = getattr(exporters.others.get("influxdb"), "timezone", None)
    if influx is not None and value is not None and influx != value:
        raise _Invalid("exporters.influxdb.timezone",
                       f"differs from timezone ({value!r}); days end at one midnight: remove this one")
    return value if value is not None else influx


@dataclass(frozen=True)
class SourceConfig:
    type: str
    options: Any


@dataclass(frozen=True)
class MeterConfig:
    name: str
    source: SourceConfig
    stale_after: float | None = None


@dataclass(frozen=True)
class DeviceConfig:
    type: str
    options: Any


@dataclass(frozen=True)
class Config:
    path: str
    logging: LoggingOptions = LoggingOptions()
    server: ServerOptions = ServerOptions()
    meters: dict[str, MeterConfig] = field(default_factory=dict)
    devices: tuple[DeviceConfig, ...] = ()
    exporters: ExportersOptions = ExportersOptions()
    store: StoreOptions = StoreOptions()
    conf_dir: str | None = None
    reload: ReloadOptions = ReloadOptions()
    forecast: ForecastOptions = ForecastOptions()
    timezone: str | None = None  # IANA name: which midnight ends a day (default: the system's)

    def tzinfo(self) -> tzinfo | None:
        """The home's time zone (``None``: the system's local time)."""
        return ZoneInfo(self.timezone) if self.timezone else None


_SIMPLE_SECTIONS = {
    "reload": ReloadOptions,
    "logging": LoggingOptions,
    "server": ServerOptions,
    "store": StoreOptions,
    "forecast": ForecastOptions,
}
_TOP_KEYS = (*_SIMPLE_SECTIONS, "exporters", "meters", "devices", "conf_dir", "timezone")

_METER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

DEFAULT_METER = {"grid": {"source": {"type": "simulator"}}}


def _typed(registry: typing.Mapping[str, Any], data: Any, key: str, env: typing.Mapping[str, str], what: str) -> tuple[str, Any]:
    """Split ``{type: X, ...}`` and build X's option dataclass from the rest."""
    if not isinstance(data, dict):
        raise _Invalid(key, f"expected a mapping with a 'type' key; got {_describe(data)}")
    kind = _expand(data.get("type"), env, _join(key, "type"))
    if kind is not None and not isinstance(kind, str):
        raise _Invalid(_join(key, "type"), f"expected one of {', '.join(sorted(registry))}; got {_describe(kind)}")
    if kind is None:
        raise _Invalid(_join(key, "type"), f"required key is missing (one of {', '.join(sorted(registry))})")
    if kind not in registry:
        near = difflib.get_close_matches(str(kind), list(registry), n=1, cutoff=0.5)
        hint_txt = f"; did you mean {near[0]!r}?" if near else ""
        raise _Invalid(_join(key, "type"), f"unknown {what} type {_describe(kind)}; expected one of {', '.join(sorted(registry))}{hint_txt}")
    rest = {k: v for k, v in data.items() if k != "type"}
    return str(kind), build(registry[kind], rest, key, env)


def _meter(name: str, data: Any, key: str, env: typing.Mapping[str, str]) -> MeterConfig:
    from meteremu.sources import option_types as source_types

    if not isinstance(data, dict):
        raise _Invalid(key, f"expected a mapping with a 'source' key; got {_describe(data)}")
    check_keys(data, ("source", "stale_after"), key)
    if "source" not in data:
        raise _Invalid(_join(key, "source"), "required key is missing (a mapping with a 'type' key)")
    kind, options = _typed(source_types(), data["source"], _join(key, "source"), env, "source")
    stale = None
    if data.get("stale_after") is not None:
        stale = convert(data["stale_after"], Duration, _join(key, "stale_after"), env)
        if stale <= 0:
            raise _Invalid(_join(key, "stale_after"), "expected a duration above 0")
    return MeterConfig(name=name, source=SourceConfig(kind, options), stale_after=stale)


def _check_ports(server: ServerOptions, devices: list[DeviceConfig]) -> None:
    """Two devices cannot answer on one HTTP port: each is one Shelly (devices without HTTP are left out)."""
    seen: dict[int, int] = {}
    for i, device in enumerate(devices):
        if not hasattr(device.options, "http_port"):
            continue  # a face without HTTP (the SMA Energy Meter only sends datagrams)
        port = getattr(device.options, "http_port", None)
        port = server.http_port if port is None else port
        if not 0 <= port <= 65535:
            raise _Invalid(_join(_join("devices", i), "http_port"), f"expected a port 0-65535; got {port}")
        if port in seen:
            raise _Invalid(_join(_join("devices", i), "http_port"),
                           f"port {port} already serves devices[{seen[port]}]; give each device its own http_port")
        seen[port] = i


def parse_config(data: Any, path: str, env: typing.Mapping[str, str] | None = None,
                 extra_meters: dict[str, MeterConfig] | None = None, conf_dir: str | None = None) -> Config:
    """Validate an already-parsed YAML document. Raises :class:`ConfigError`."""
    from meteremu.devices import option_types as device_types

    env = os.environ if env is None else env
    try:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise _Invalid("(top level)", f"expected a mapping of sections; got {_describe(data)}")
        check_keys(data, _TOP_KEYS, "")
        kwargs: dict[str, Any] = {
            name: build(cls, data.get(name), name, env) for name, cls in _SIMPLE_SECTIONS.items()
        }
        kwargs["exporters"] = _exporters(data.get("exporters"), env)
        if data.get("conf_dir") is not None and not isinstance(data.get("conf_dir"), str):
            raise _Invalid("conf_dir", f"expected a directory path or null; got {_describe(data['conf_dir'])}")
        raw_meters = data.get("meters", DEFAULT_METER)
        if raw_meters is None:
            raw_meters = {}
        if not isinstance(raw_meters, dict):
            raise _Invalid("meters", f"expected a mapping of meter name to meter; got {_describe(raw_meters)}")
        meters = {}
        for name, body in raw_meters.items():
            if not _METER_NAME.fullmatch(str(name)):
                raise _Invalid(_join("meters", str(name)), "expected a meter name of letters, digits, '_', '-' or '.'")
            meters[str(name)] = _meter(str(name), body, _join("meters", str(name)), env)
        for name, meter in (extra_meters or {}).items():
            if name in meters:
                raise _Invalid(_join("meters", name), f"also defined by {name}.yaml in {conf_dir}; define each meter once")
            meters[name] = meter
        raw_devices = data.get("devices")
        if raw_devices is None:
            raw_devices = [{"type": "shelly_pro_3em"}] if "devices" not in data else []
        if not isinstance(raw_devices, list):
            raise _Invalid("devices", f"expected a list of devices; got {_describe(raw_devices)}")
        devices = []
        for i, body in enumerate(raw_devices):
            key = _join("devices", i)
            kind, options = _typed(device_types(), body, key, env, "device")
            served = getattr(options, "meter", None)
            if served is None:
                if not meters and "devices" not in data:
                    raise _Invalid("meters", "expected at least one meter for the default device to serve "
                                             "(or write devices: [] to serve none)")
                if not meters:
                    raise _Invalid(_join(key, "meter"), "no meter is configured for this device to serve")
                options = dataclasses.replace(options, meter=next(iter(meters)))
            elif served not in meters:
                raise _Invalid(_join(key, "meter"), f"unknown meter {served!r}; configured meters: {', '.join(meters) or 'none'}")
            devices.append(DeviceConfig(kind, options))
        _check_ports(kwargs["server"], devices)
        kwargs["timezone"] = _timezone(data.get("timezone"), kwargs["exporters"])
        return Config(path=path, meters=meters, devices=tuple(devices), conf_dir=conf_dir, **kwargs)
    except _Invalid as exc:
        raise ConfigError(path, exc.key, exc.why) from None


class _Int(int):
    """An int that remembers how it was written (``text``), for string fields."""

    text: str


class _Float(float):
    """A float that remembers how it was written (``text``), for string fields."""

    text: str


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 and leading-zero octal numbers.

    Plain YAML 1.1 reads an unquoted ``12:00`` as the integer 720 and
    ``001122334455`` as an octal number; users mean a time of day
    (``start_time: 12:00``) and a MAC address, so such scalars stay strings.
    Numbers keep their written text, so a string field given ``ver: 1.10``
    gets ``"1.10"``, not ``"1.1"``. A key given twice in one mapping is an
    error rather than a silent "last one wins".
    """

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        number = _Int(super().construct_yaml_int(node))
        number.text = node.value
        return number

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        number = _Float(super().construct_yaml_float(node))
        number.text = node.value
        return number

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (each key may appear once per mapping)",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


MAX_CONFIG_BYTES = 256 * 1024  # the main file (an annotated example with every option is ~20 KiB)
MAX_METER_FILE_BYTES = 16 * 1024  # one conf.d meter (a few hundred bytes): parsed on the running service


def _read_yaml(path: str, limit: int = MAX_CONFIG_BYTES) -> Any:
    """Parse a YAML file of at most ``limit`` bytes (a larger one is refused unread)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(path, "(file)", f"cannot read the file: {exc.strerror or exc}") from None
    if len(raw) > limit:
        raise ConfigError(path, "(file)", f"larger than {limit} bytes; expected a configuration file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, "(file)", "expected UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(syntax)"
        raise ConfigError(path, where, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, "(syntax)", f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(path, "(syntax)", "invalid YAML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with thousands of digits
        raise ConfigError(path, "(syntax)", f"invalid YAML: {str(exc)[:80]}") from None


METER_FILE_SUFFIX = ".yaml"


def meter_name_for(path: str) -> str:
    """``conf.d/heatpump.yaml`` holds the meter ``heatpump``."""
    return os.path.basename(path)[: -len(METER_FILE_SUFFIX)]


def load_meter_file(path: str, env: typing.Mapping[str, str] | None = None) -> MeterConfig:
    """One ``conf.d`` file: file name = meter name, body = the meter's body."""
    env = os.environ if env is None else env
    name = meter_name_for(path)
    data = _read_yaml(path, MAX_METER_FILE_BYTES)
    try:
        if not _METER_NAME.fullmatch(name):
            raise _Invalid("(file name)", "expected a meter name of letters, digits, '_', '-' or '.' before .yaml")
        return _meter(name, data, "", env)
    except _Invalid as exc:
        raise ConfigError(path, exc.key or "(top level)", exc.why) from None


def conf_dir_files(directory: str, owner: str | None = None) -> list[str]:
    """The meter files of a conf.d directory, sorted (hidden files skipped).

    ``owner`` is the main config file, named in the error if the directory
    cannot be read.
    """
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except (OSError, ValueError, UnicodeError) as exc:
        where = str(directory).encode("utf-8", "backslashreplace").decode()
        raise ConfigError(owner or where, "conf_dir",
                          f"cannot read the directory {where}: {getattr(exc, 'strerror', None) or exc}") from None
    return [os.path.join(directory, n) for n in names
            if n.endswith(METER_FILE_SUFFIX) and not n.startswith(".")
            and os.path.isfile(os.path.join(directory, n))]


def resolve_conf_dir(data: Any, path: str) -> str | None:
    """``conf_dir`` (default ``conf.d``) relative to the main file's folder; null = off."""
    raw = data.get("conf_dir", "conf.d") if isinstance(data, dict) else "conf.d"
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw:
        raise ConfigError(path, "conf_dir", f"expected a directory path or null; got {_describe(raw)}")
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), raw))


def load_config(path: str, env: typing.Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML file and its conf.d meters. Raises :class:`ConfigError`."""
    data = _read_yaml(path)
    conf_dir = resolve_conf_dir(data, path)
    extra: dict[str, MeterConfig] = {}
    if conf_dir is not None:
        for file in conf_dir_files(conf_dir, owner=path):
            meter = load_meter_file(file, env)
            extra[meter.name] = meter
    return parse_config(data, path, env, extra_meters=extra, conf_dir=conf_dir)


def default_config() -> Config:
    """The embedded default: a simulated meter served by one Shelly on port 8080."""
    return parse_config({"server": {"http_port": 8080}}, "(embedded default)", env={})
