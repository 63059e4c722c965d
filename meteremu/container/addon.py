"""The Home Assistant add-on: ``/data/options.json`` → a meteremu configuration.

The Supervisor starts the add-on container with the user's options in
``/data/options.json``, a ``SUPERVISOR_TOKEN`` in the environment and its API
at ``http://supervisor``. :func:`translate` turns the options (the common
cases: one source, the device's ports, forecast on or off, MQTT publishing)
plus what the Supervisor offers (its MQTT service) into a config mapping,
then merges the free-form ``custom_config`` YAML on top for everything else.
It is pure, so every option is tested without a Supervisor; :func:`main`
does the I/O (read the file, ask the Supervisor, write the config, exec).

Secrets (the Supervisor token, passwords and tokens from the options or the
MQTT service) never go into the generated file: it names environment
variables (``${VAR}``) that :func:`main` sets for twistd, so a config error
or a debug dump cannot show them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from meteremu.container.entry import exec_twistd

SOURCES = ("simulator", "homeassistant", "envoy", "dsmr", "homewizard", "mqtt")
LOG_LEVELS = ("debug", "info", "warn", "error")
SUPERVISOR = "http://supervisor"
OPTIONS_FILE = "/data/options.json"
# The add-on's HTTP port is fixed (config.yaml's ingress_port and the real device's port).
HTTP_PORT = 80
# The Supervisor's ingress proxy: the only address ingress requests come from.
INGRESS_PROXY = "172.30.32.2"


class AddonOptionError(Exception):
    """One option is wrong: its name and what was expected (one line in the add-on log)."""


@dataclass(frozen=True)
class MqttService:
    """The Supervisor's ``/services/mqtt`` answer (the Mosquitto add-on's broker)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False


@dataclass(frozen=True)
class Supervisor:
    """What the Supervisor offers this add-on; ``token`` False when not run by one."""

    url: str = SUPERVISOR
    token: bool = False
    mqtt: MqttService | None = None


@dataclass
class Translation:
    """The config mapping and the environment variables its ``${VAR}`` names need."""

    config: dict[str, Any]
    secrets: dict[str, str] = field(default_factory=dict, repr=False)


def _text(options: Mapping[str, Any], key: str) -> str | None:
    """An optional string option: absent, null and blank all mean "not set"."""
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise AddonOptionError(f"option {key}: expected text; got {type(value).__name__}")
    return value.strip() or None


def _flag(options: Mapping[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise AddonOptionError(f"option {key}: expected true or false; got {value!r}")
    return value


def _ports(options: Mapping[str, Any], key: str, default: list[int]) -> list[int]:
    value = options.get(key, default)
    if not isinstance(value, list) or not all(isinstance(p, int) and not isinstance(p, bool)
                                              and 0 < p < 65536 for p in value):
        raise AddonOptionError(f"option {key}: expected a list of ports 1-65535; got {value!r}")
    return list(value)


def _required(options: Mapping[str, Any], key: str, source: str) -> str:
    value = _text(options, key)
    if value is None:
        raise AddonOptionError(f"option {key}: needed for source {source}")
    return value


def _secret(tr: Translation, name: str, value: str) -> str:
    """Keep ``value`` out of the file: an environment variable, referenced as ``${name}``."""
    tr.secrets[name] = value
    return "${" + name + "}"


def _homeassistant(options: Mapping[str, Any], sup: Supervisor) -> dict[str, Any]:
    if not sup.token:
        raise AddonOptionError("option source: homeassistant needs the add-on to run under the "
                               "Supervisor (no SUPERVISOR_TOKEN); outside it use custom_config")
    source: dict[str, Any] = {
        "type": "homeassistant",
        # The Supervisor's proxy to Home Assistant Core: REST under /core/api,
        # the WebSocket API at /core/websocket, both with the add-on's token.
        "url": f"{sup.url}/core",
        "websocket_url": "ws" + sup.url[len("http"):] + "/core/websocket",
        "token": "${SUPERVISOR_TOKEN}",
    }
    entities = {key: _text(options, f"ha_{key}") for key in ("power", "a_power", "b_power", "c_power")}
    chosen = {k: v for k, v in entities.items() if v is not None}
    if chosen.get("power") and len(chosen) > 1:
        raise AddonOptionError("option ha_power: give either one total (ha_power) or the phases "
                               "(ha_a_power, ha_b_power, ha_c_power), not both")
    if chosen:  # none: the source discovers them (energy preferences, then heuristics)
        source["entities"] = chosen
    return source


def _envoy(options: Mapping[str, Any], tr: Translation) -> dict[str, Any]:
    source: dict[str, Any] = {"type": "envoy", "host": _required(options, "envoy_host", "envoy")}
    token = _text(options, "envoy_token")
    username = _text(options, "envoy_username")
    if token:
        source["token"] = _secret(tr, "METEREMU_ADDON_ENVOY_TOKEN", token)
    elif username:
        source["username"] = username
        source["password"] = _secret(tr, "METEREMU_ADDON_ENVOY_PASSWORD",
                                     _required(options, "envoy_password", "envoy"))
        source["serial"] = _required(options, "envoy_serial", "envoy")
    else:
        raise AddonOptionError("option envoy_token: needed for source envoy "
                               "(or envoy_username, envoy_password and envoy_serial)")
    return source


def _dsmr(options: Mapping[str, Any]) -> dict[str, Any]:
    serial, tcp = _text(options, "dsmr_serial"), _text(options, "dsmr_tcp")
    if (serial is None) == (tcp is None):
        raise AddonOptionError("option dsmr_serial: give either dsmr_serial (e.g. /dev/ttyUSB0) "
                               "or dsmr_tcp (host:port of a P1 bridge)")
    return {"type": "dsmr", "serial": serial, "tcp": tcp}


def _homewizard(options: Mapping[str, Any], tr: Translation) -> dict[str, Any]:
    source: dict[str, Any] = {"type": "homewizard", "host": _required(options, "homewizard_host", "homewizard")}
    token = _text(options, "homewizard_token")
    if token:
        source["api"] = "v2"
        source["token"] = _secret(tr, "METEREMU_ADDON_HOMEWIZARD_TOKEN", token)
        # The meter's certificate is signed by HomeWizard's own CA: pin it when the
        # user gives the fingerprint, else trust the LAN (as the HA integration does).
        fingerprint = _text(options, "homewizard_fingerprint")
        if fingerprint:
            source["tls_fingerprint"] = fingerprint
        else:
            source["verify_ssl"] = False
    else:  # no token: the v1 local API ("Local API" switched on in the app)
        source["api"] = "v1"
    return source


def _broker(sup: Supervisor, tr: Translation, purpose: str) -> dict[str, Any]:
    if sup.mqtt is None:
        raise AddonOptionError(f"option {purpose}: needs the Supervisor's MQTT service "
                               "(install and start the Mosquitto broker add-on)")
    broker: dict[str, Any] = {"host": sup.mqtt.host, "port": sup.mqtt.port, "tls": sup.mqtt.ssl}
    if sup.mqtt.username:
        broker["username"] = sup.mqtt.username
        if sup.mqtt.password:
            broker["password"] = _secret(tr, "METEREMU_ADDON_MQTT_PASSWORD", sup.mqtt.password)
    return broker


def _mqtt_source(options: Mapping[str, Any], sup: Supervisor, tr: Translation) -> dict[str, Any]:
    source = {"type": "mqtt", **_broker(sup, tr, "source")}
    source["topic"] = _required(options, "mqtt_topic", "mqtt")
    source["values"] = {"power": _required(options, "mqtt_power_path", "mqtt")}
    return source


def _source(options: Mapping[str, Any], sup: Supervisor, tr: Translation) -> dict[str, Any]:
    kind = options.get("source", "simulator")
    if kind not in SOURCES:
        raise AddonOptionError(f"option source: expected one of {', '.join(SOURCES)}; got {kind!r}")
    if kind == "simulator":
        return {"type": "simulator", "interval": "1s", "seed": 1}
    if kind == "homeassistant":
        return _homeassistant(options, sup)
    if kind == "envoy":
        return _envoy(options, tr)
    if kind == "dsmr":
        return _dsmr(options)
    if kind == "homewizard":
        return _homewizard(options, tr)
    return _mqtt_source(options, sup, tr)


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Pure: ``extra`` on top of ``base``; mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _custom(options: Mapping[str, Any]) -> Mapping[str, Any]:
    text = _text(options, "custom_config")
    if text is None:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise AddonOptionError(f"option custom_config: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise AddonOptionError("option custom_config: expected a mapping of config sections "
                               f"(like meteremu.yaml); got {type(data).__name__}")
    return data


def translate(options: Mapping[str, Any], sup: Supervisor) -> Translation:
    """Pure: the add-on options and the Supervisor's offer → a meteremu config.

    Raises :class:`AddonOptionError` naming the option at fault.
    """
    if not isinstance(options, Mapping):
        raise AddonOptionError("options.json: expected a JSON object")
    tr = Translation(config={})
    level = options.get("log_level", "info")
    if level not in LOG_LEVELS:
        raise AddonOptionError(f"option log_level: expected one of {', '.join(LOG_LEVELS)}; got {level!r}")
    modbus = _flag(options, "modbus", True)
    device: dict[str, Any] = {
        "type": "shelly_pro_3em", "meter": "grid", "mac": "auto", "on_stale": "error",
        "websocket": True, "udp_ports": _ports(options, "udp_ports", [1010, 2220]),
        "modbus_port": 502 if modbus else None, "mdns": _flag(options, "mdns", True),
    }
    config: dict[str, Any] = {
        "logging": {"level": level},
        "server": {"host": "0.0.0.0", "http_port": HTTP_PORT, "ingress_proxies": [INGRESS_PROXY]},
        "meters": {"grid": {"source": _source(options, sup, tr)}},
        "store": {"path": "/data/meteremu.db", "persist_interval": "30s"},
        "devices": [device],
        "forecast": {"enabled": _flag(options, "forecast", False)},
    }
    if _flag(options, "mqtt_publish", True) and sup.mqtt is not None:
        config["exporters"] = {"mqtt": {"enabled": True, **_broker(sup, tr, "mqtt_publish")}}
    tr.config = merge(config, _custom(options))
    return tr


def mqtt_service(answer: Any) -> MqttService | None:
    """Pure: the Supervisor's ``/services/mqtt`` JSON → :class:`MqttService` (None if unusable)."""
    if not isinstance(answer, Mapping) or answer.get("result") != "ok":
        return None
    data = answer.get("data")
    if not isinstance(data, Mapping) or not isinstance(data.get("host"), str):
        return None
    port = data.get("port", 1883)
    if not isinstance(port, int) or isinstance(port, bool):
        return None
    return MqttService(host=data["host"], port=port, username=data.get("username") or None,
                       password=data.get("password") or None, ssl=bool(data.get("ssl", False)))


def ask_mqtt(url: str, token: str) -> MqttService | None:
    """``GET /services/mqtt`` (blocking, before the reactor; no service → None)."""
    request = urllib.request.Request(f"{url}/services/mqtt", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - the Supervisor
            return mqtt_service(json.loads(answer.read(65536)))
    except (OSError, ValueError):  # 400 "no service", unreachable, not JSON: publish nothing
        return None


def main() -> None:
    """Read the options, ask the Supervisor, write the config, become twistd."""
    token = os.environ.get("SUPERVISOR_TOKEN", "")
    url = os.environ.get("METEREMU_SUPERVISOR_URL", SUPERVISOR).rstrip("/")
    path = os.environ.get("METEREMU_ADDON_OPTIONS", OPTIONS_FILE)
    try:
        try:
            with open(path, encoding="utf-8") as file:
                options = json.load(file)
        except (OSError, ValueError) as exc:
            raise AddonOptionError(f"{path}: cannot read the add-on options ({exc.__class__.__name__})") from None
        sup = Supervisor(url=url, token=bool(token), mqtt=ask_mqtt(url, token) if token else None)
        tr = translate(options, sup)
    except AddonOptionError as exc:
        sys.stderr.write(f"meteremu add-on: {exc}\n")
        raise SystemExit(2) from None
    os.environ.update(tr.secrets)
    fd, config = tempfile.mkstemp(prefix="meteremu-addon-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        yaml.safe_dump(tr.config, out, sort_keys=False)
    mqtt = "the Supervisor's MQTT service" if "exporters" in tr.config else "no MQTT publishing"
    exec_twistd(config, f"{path} (source {tr.config['meters']['grid']['source']['type']}, {mqtt})")
