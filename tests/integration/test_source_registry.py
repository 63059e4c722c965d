"""The registry contract for every source type (``meteremu.sources.SOURCE_MODULES``).

Validating a config must load no client library, whatever source type it
uses: treq, Autobahn's Twisted glue, pyOpenSSL, paho-mqtt, pyserial, nor
``twisted.internet.endpoints``/``ssl`` (which probe for pyOpenSSL) nor the
reactor. A source package's ``__init__`` exposes ``Options``, ``PUSH`` and a
``make_source`` that imports the I/O modules only when the service is built.

Each type is validated in a fresh interpreter (this one has loaded all of
them long ago): a minimal valid config, then the type's example file
(etc/examples/<type>.yaml), which sets every option.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from meteremu.sources import SOURCE_MODULES
from tests.support import ROOT

CLIENT_LIBRARIES = ("treq", "autobahn.twisted", "OpenSSL", "paho", "serial", "twisted.internet.endpoints",
                    "twisted.internet.ssl", "twisted.internet.serialport", "twisted.internet.reactor",
                    "pymodbus", "sunspec2", "aioesphomeapi", "noise", "google.protobuf", "zeroconf")

MINIMAL = {
    "simulator": {"type": "simulator"},
    "envoy": {"type": "envoy", "host": "192.168.1.100", "token": "t"},
    "homeassistant": {"type": "homeassistant", "url": "http://ha:8123", "token": "t"},
    "dsmr": {"type": "dsmr", "serial": "/dev/ttyUSB0"},
    "homewizard": {"type": "homewizard", "host": "192.168.1.50"},
    "kamstrup": {"type": "kamstrup", "serial": "/dev/ttyUSB0"},
    "mqtt": {"type": "mqtt", "values": {"power": "meter/power"}},
    "http_json": {"type": "http_json", "url": "http://192.168.1.60/api", "values": {"power": "$.power"}},
    "tasmota": {"type": "tasmota", "host": "192.168.1.70", "values": {"power": "Power_curr"}},
    "tibber_pulse": {"type": "tibber_pulse", "host": "192.168.1.80"},
    "sml": {"type": "sml", "serial": "/dev/ttyUSB0"},
    "shelly": {"type": "shelly", "host": "192.168.1.90"},
    "sma_energy_meter": {"type": "sma_energy_meter"},
    "modbus": {"type": "modbus", "host": "192.168.1.40", "preset": "sdm630"},
    "esphome": {"type": "esphome", "host": "192.168.1.30", "values": {"power": "grid_power"}},
}

ENV = {"HA_TOKEN": "t", "ENVOY_TOKEN": "t", "HOMEWIZARD_TOKEN": "t", "MQTT_PASSWORD": "p",
       "TIBBER_BRIDGE_PASSWORD": "p", "ESPHOME_KEY": "px7tsbK3C7bpXHr2OevEV2ZMg/FrNBw2+O2pNPbedtA="}

_CHECK = """
import json, sys
from meteremu.config import load_meter_file, parse_config
kind, source, example, env, banned = json.loads(sys.argv[1])
config = parse_config({"meters": {"m": {"source": source}}}, "(minimal)", env={})
assert config.meters["m"].source.type == kind
assert load_meter_file(example, env=env).source.type == kind
loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in banned))
print(json.dumps(loaded))
"""


class RegistryContractTests(SynchronousTestCase):
    maxDiff = None

    def test_every_type_has_a_minimal_config(self) -> None:
        self.assertEqual(sorted(MINIMAL), sorted(SOURCE_MODULES),
                         "a new source type needs its minimal config in MINIMAL")

    def test_validating_a_config_loads_no_client_library(self) -> None:
        found = {}
        for kind in SOURCE_MODULES:
            example = os.path.join(ROOT, "etc", "examples", f"{kind}.yaml")
            argument = json.dumps([kind, MINIMAL.get(kind, {"type": kind}), example, ENV, CLIENT_LIBRARIES])
            out = subprocess.run([sys.executable, "-c", _CHECK, argument], cwd=ROOT, capture_output=True,
                                 text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
            self.assertEqual(out.returncode, 0, f"{kind}: {out.stderr}")
            loaded = json.loads(out.stdout)
            if loaded:
                found[kind] = loaded
        self.assertEqual(found, {}, "validating these source types imported client libraries")

    def test_packages_expose_only_the_registry_hooks(self) -> None:
        import importlib

        for kind in ("homeassistant", "homewizard", "kamstrup", "http_json", "tasmota", "tibber_pulse", "sml", "shelly",
                     "sma_energy_meter", "modbus", "esphome"):
            module = importlib.import_module(SOURCE_MODULES[kind])
            self.assertEqual(sorted(module.__all__), ["Options", "PUSH", "make_source"], kind)
