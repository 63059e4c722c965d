"""Tests for meteremu.config: YAML → frozen dataclasses, one-line errors.

Pure: every test passes its environment explicitly (``env={...}``) and writes
its files under ``self.mktemp()``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import sys
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from meteremu import tap
from meteremu.config import (
    Config,
    ConfigError,
    default_config,
    load_config,
    parse_config,
    parse_duration,
)
from meteremu.devices.shelly.options import FallbackPolicy, MdnsOptions
from meteremu.sources.simulator import OutageOptions, SimulatorOptions
from tests.support import ROOT
from tests.support.options import option_fields

ETC = os.path.join(ROOT, "etc")


class ConfigTestMixin:
    """Helpers: write a YAML document to a temporary file and load it."""

    def write(self, text: str) -> str:
        path = self.mktemp() + ".yaml"
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(textwrap.dedent(text))
        return path

    def load(self, text: str, env: dict[str, str] | None = None) -> Config:
        return load_config(self.write(text), env={} if env is None else env)

    def error(self, text: str, env: dict[str, str] | None = None) -> ConfigError:
        path = self.write(text)
        exc = self.assertRaises(ConfigError, load_config, path, {} if env is None else env)
        self.assertEqual(exc.file, path)
        self.assertEqual(str(exc), f"{path}: {exc.key}: {exc.why}")
        self.assertNotIn("\n", str(exc))
        return exc


class DurationTests(ConfigTestMixin, SynchronousTestCase):
    def test_units(self) -> None:
        self.assertEqual(parse_duration("500ms"), 0.5)
        self.assertEqual(parse_duration("2s"), 2.0)
        self.assertEqual(parse_duration("10m"), 600.0)
        self.assertEqual(parse_duration("1h"), 3600.0)
        self.assertEqual(parse_duration("1d"), 86400.0)
        self.assertEqual(parse_duration("1.5s"), 1.5)

    def test_compound(self) -> None:
        self.assertEqual(parse_duration("1h30m"), 5400.0)
        self.assertEqual(parse_duration("1m30s500ms"), 90.5)

    def test_bare_number_is_seconds(self) -> None:
        self.assertEqual(parse_duration(3), 3.0)
        self.assertEqual(parse_duration(0.25), 0.25)
        self.assertEqual(parse_duration("7"), 7.0)

    def test_result_is_float(self) -> None:
        self.assertIs(type(parse_duration(3)), float)
        self.assertIs(type(parse_duration("2s")), float)

    def test_invalid(self) -> None:
        for bad in ("fast", "-1s", "2x", "s", "", "1h 30m", "2s1", True, False, -1, None,
                    [1], float("nan"), float("inf")):
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, parse_duration, bad)

    def test_bad_duration_in_file(self) -> None:
        exc = self.error("""
            meters:
              grid:
                source: {type: simulator, interval: fast}
        """)
        self.assertEqual(exc.key, "meters.grid.source.interval")
        self.assertIn("expected a duration", exc.why)
        self.assertIn("'fast'", exc.why)

    def test_duration_fields_in_file(self) -> None:
        config = self.load("""
            meters:
              grid:
                source: {type: simulator, interval: 500ms}
                stale_after: 1h30m
            store: {persist_interval: 2}
        """)
        self.assertEqual(config.meters["grid"].source.options.interval, 0.5)
        self.assertEqual(config.meters["grid"].stale_after, 5400.0)
        self.assertEqual(config.store.persist_interval, 2.0)


class EnvironmentTests(ConfigTestMixin, SynchronousTestCase):
    def test_variable(self) -> None:
        config = self.load("server: {host: '${HOST}'}", env={"HOST": "192.0.2.7"})
        self.assertEqual(config.server.host, "192.0.2.7")

    def test_default_when_unset(self) -> None:
        config = self.load("server: {host: '${HOST:-127.0.0.1}'}")
        self.assertEqual(config.server.host, "127.0.0.1")

    def test_default_when_empty(self) -> None:
        config = self.load("server: {host: '${HOST:-127.0.0.1}'}", env={"HOST": ""})
        self.assertEqual(config.server.host, "127.0.0.1")

    def test_set_variable_wins_over_default(self) -> None:
        config = self.load("server: {host: '${HOST:-127.0.0.1}'}", env={"HOST": "::"})
        self.assertEqual(config.server.host, "::")

    def test_inside_longer_string(self) -> None:
        config = self.load("store: {path: '${DIR}/state-${NAME:-x}.db'}",
                           env={"DIR": "/var/lib/meteremu", "NAME": "pi"})
        self.assertEqual(config.store.path, "/var/lib/meteremu/state-pi.db")

    def test_result_is_plain_str(self) -> None:
        config = self.load("store: {path: '${DIR}'}", env={"DIR": "/x"})
        self.assertIs(type(config.store.path), str)

    def test_substituted_number_into_int_field(self) -> None:
        config = self.load("server: {http_port: '${PORT}'}", env={"PORT": "8080"})
        self.assertEqual(config.server.http_port, 8080)
        self.assertIs(type(config.server.http_port), int)

    def test_substituted_default_into_int_field(self) -> None:
        config = self.load("server: {http_port: '${PORT:-8081}'}")
        self.assertEqual(config.server.http_port, 8081)

    def test_substituted_non_number_into_int_field(self) -> None:
        exc = self.error("server: {http_port: '${PORT}'}", env={"PORT": "eighty"})
        self.assertEqual(exc.key, "server.http_port")
        self.assertIn("expected a whole number", exc.why)

    def test_substituted_time_stays_text(self) -> None:
        """``${S}`` = ``12:00`` is not read as the base-60 number 720."""
        exc = self.error("meters: {grid: {source: {type: simulator, seed: '${S}'}}}",
                         env={"S": "12:00"})
        self.assertEqual(exc.key, "meters.grid.source.seed")
        config = self.load("meters: {grid: {source: {type: simulator, start_time: '${S}'}}}",
                           env={"S": "12:00"})
        self.assertEqual(config.meters["grid"].source.options.start_time, "12:00")

    def test_substituted_bool_float_duration_literal(self) -> None:
        config = self.load("""
            logging: {level: '${LEVEL}'}
            server: {cors: {enabled: '${CORS}'}}
            meters:
              grid:
                source: {type: '${KIND}', interval: '${EVERY}', speed: '${SPEED}'}
                stale_after: '${STALE:-1m}'
            devices:
              - {type: shelly_pro_3em, on_stale: '${POLICY}', mdns: '${MDNS}'}
        """, env={"LEVEL": "debug", "CORS": "true", "KIND": "simulator", "EVERY": "500ms",
                  "SPEED": "2.5", "POLICY": "hold", "MDNS": "true"})
        self.assertEqual(config.logging.level, "debug")
        self.assertIs(config.server.cors.enabled, True)
        grid = config.meters["grid"]
        self.assertEqual(grid.source.type, "simulator")
        self.assertEqual(grid.source.options.interval, 0.5)
        self.assertEqual(grid.source.options.speed, 2.5)
        self.assertEqual(grid.stale_after, 60.0)
        self.assertEqual(config.devices[0].options.on_stale, "hold")
        self.assertIs(config.devices[0].options.mdns, True)

    def test_substitution_is_not_recursive(self) -> None:
        config = self.load("store: {path: '${A}'}", env={"A": "${B}", "B": "no"})
        self.assertEqual(config.store.path, "${B}")

    def test_missing_variable(self) -> None:
        exc = self.error("""
            devices:
              - type: shelly_pro_3em
                name: '${DEVICE_NAME}'
        """)
        self.assertEqual(exc.key, "devices[0].name")
        self.assertIn("DEVICE_NAME", exc.why)
        self.assertIn("not set", exc.why)

    def test_missing_variable_in_int_field(self) -> None:
        exc = self.error("server: {http_port: '${PORT}'}")
        self.assertEqual(exc.key, "server.http_port")
        self.assertIn("environment variable PORT is not set", exc.why)

    def test_missing_variable_in_duration_field(self) -> None:
        exc = self.error("meters: {grid: {source: {type: simulator}, stale_after: '${STALE}'}}")
        self.assertEqual(exc.key, "meters.grid.stale_after")
        self.assertIn("environment variable STALE is not set", exc.why)

    def test_missing_variable_in_type(self) -> None:
        exc = self.error("meters: {grid: {source: {type: '${KIND}'}}}")
        self.assertEqual(exc.key, "meters.grid.source.type")
        self.assertIn("environment variable KIND is not set", exc.why)

    def test_default_comes_from_os_environ(self) -> None:
        self.patch(os, "environ", {"METEREMU_TEST_PORT": "9123"})
        config = parse_config({"server": {"http_port": "${METEREMU_TEST_PORT}"}}, "x.yaml")
        self.assertEqual(config.server.http_port, 9123)


class SyntaxTests(ConfigTestMixin, SynchronousTestCase):
    def test_a_huge_file_is_refused_unread(self) -> None:
        exc = self.error("logging: {}\n" + "#" * (300 * 1024) + "\n")
        self.assertEqual(exc.key, "(file)")
        self.assertIn("larger than 262144 bytes", exc.why)

    def test_yaml_syntax_error(self) -> None:
        exc = self.error("server:\n  http_port: [1, 2\nlogging: {}\n")
        self.assertEqual(exc.key, "line 3, column 8")
        self.assertTrue(exc.why.startswith("invalid YAML: "), exc.why)

    def test_bad_indentation(self) -> None:
        exc = self.error("server:\n  host: a\n   http_port: 1\n")
        self.assertRegex(exc.key, r"^line 3, column \d+$")

    def test_duplicate_key(self) -> None:
        exc = self.error("server: {}\nlogging: {}\nserver: {http_port: 1}\n")
        self.assertEqual(exc.key, "line 3, column 1")
        self.assertIn("duplicate key 'server'", exc.why)

    def test_duplicate_nested_key(self) -> None:
        exc = self.error("server:\n  http_port: 1\n  http_port: 2\n")
        self.assertEqual(exc.key, "line 3, column 3")

    def test_merge_keys_are_not_duplicates(self) -> None:
        config = self.load("""
            meters:
              a: &base {source: {type: simulator, seed: 3}, stale_after: 9s}
              b: {<<: *base, stale_after: 20s}
            devices: []
        """)
        self.assertEqual(config.meters["b"].stale_after, 20.0)
        self.assertEqual(config.meters["b"].source.options.seed, 3)

    def test_unsafe_tag(self) -> None:
        exc = self.error("server: !!python/object/apply:os.system ['true']\n")
        self.assertRegex(exc.key, r"^line 1, column \d+$")

    def test_missing_file(self) -> None:
        path = self.mktemp()
        exc = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual((exc.file, exc.key), (path, "(file)"))
        self.assertIn("cannot read", exc.why)

    def test_not_utf8(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as handle:
            handle.write(b"server: {host: \xff}\n")
        exc = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual(exc.key, "(file)")

    def test_top_level_not_a_mapping(self) -> None:
        exc = self.error("- server\n- logging\n")
        self.assertEqual(exc.key, "(top level)")
        self.assertIn("expected a mapping", exc.why)

    def test_empty_file_is_the_default_shape(self) -> None:
        config = self.load("")
        self.assertEqual(list(config.meters), ["grid"])
        self.assertEqual(len(config.devices), 1)

    def test_unquoted_time_stays_a_string(self) -> None:
        config = self.load("meters: {grid: {source: {type: simulator, start_time: 12:00}}}")
        self.assertEqual(config.meters["grid"].source.options.start_time, "12:00")

    def test_leading_zero_digits_stay_text(self) -> None:
        """``001122334455`` is a MAC, not the YAML 1.1 octal number 155826477."""
        config = self.load("devices: [{type: shelly_pro_3em, mac: 001122334455}]")
        self.assertEqual(config.devices[0].options.mac, "001122334455")

    def test_number_into_string_field_keeps_its_text(self) -> None:
        config = self.load("devices: [{type: shelly_pro_3em, ver: 1.10, name: 0x1F, serial: 42}]")
        options = config.devices[0].options
        self.assertEqual((options.ver, options.name, options.serial), ("1.10", "0x1F", "42"))

    def test_int_fields_hold_plain_ints(self) -> None:
        config = self.load("server: {http_port: 0x1F90}")
        self.assertEqual(config.server.http_port, 8080)
        self.assertIs(type(config.server.http_port), int)


class UnknownKeyTests(ConfigTestMixin, SynchronousTestCase):
    def test_top_level_with_suggestion(self) -> None:
        exc = self.error("sever: {http_port: 8080}\n")
        self.assertEqual(exc.key, "sever")
        self.assertEqual(exc.why, "unknown key; did you mean 'server'?")

    def test_top_level_without_close_match_lists_keys(self) -> None:
        exc = self.error("zzzz: 1\n")
        self.assertEqual(exc.key, "zzzz")
        self.assertIn("valid keys:", exc.why)
        self.assertIn("server", exc.why)

    def test_nested_with_suggestion(self) -> None:
        exc = self.error("server: {http_prot: 8080}\n")
        self.assertEqual(exc.key, "server.http_prot")
        self.assertEqual(exc.why, "unknown key; did you mean 'http_port'?")

    def test_deeply_nested(self) -> None:
        exc = self.error("server: {cors: {origin: ['*']}}\n")
        self.assertEqual(exc.key, "server.cors.origin")
        self.assertIn("'origins'", exc.why)

    def test_meter_key(self) -> None:
        exc = self.error("meters: {grid: {source: {type: simulator}, stale_afer: 3s}}")
        self.assertEqual(exc.key, "meters.grid.stale_afer")
        self.assertIn("'stale_after'", exc.why)

    def test_source_option(self) -> None:
        exc = self.error("meters: {grid: {source: {type: simulator, intervall: 3s}}}")
        self.assertEqual(exc.key, "meters.grid.source.intervall")
        self.assertIn("'interval'", exc.why)

    def test_device_option(self) -> None:
        exc = self.error("devices: [{type: shelly_pro_3em, modbus_prot: 5020}]")
        self.assertEqual(exc.key, "devices[0].modbus_prot")
        self.assertIn("'modbus_port'", exc.why)

    def test_mdns_option(self) -> None:
        exc = self.error("devices: [{type: shelly_pro_3em, mdns: {hostnam: x}}]")
        self.assertEqual(exc.key, "devices[0].mdns.hostnam")
        self.assertIn("'hostname'", exc.why)

    def test_outage_option(self) -> None:
        exc = self.error("""
            meters:
              grid:
                source:
                  type: simulator
                  outages: {every: 1h, duration: 1m, durations: 2m}
        """)
        self.assertEqual(exc.key, "meters.grid.source.outages.durations")


class WrongTypeTests(ConfigTestMixin, SynchronousTestCase):
    def test_string_where_int(self) -> None:
        exc = self.error("server: {http_port: abc}")
        self.assertEqual(exc.key, "server.http_port")
        self.assertEqual(exc.why, "expected a whole number; got 'abc'")

    def test_bool_where_int(self) -> None:
        exc = self.error("server: {http_port: true}")
        self.assertEqual(exc.key, "server.http_port")
        self.assertEqual(exc.why, "expected a whole number; got True")

    def test_float_where_int(self) -> None:
        exc = self.error("meters: {grid: {source: {type: simulator, seed: 1.5}}}")
        self.assertEqual(exc.key, "meters.grid.source.seed")

    def test_string_where_bool(self) -> None:
        exc = self.error("exporters: {prometheus: {enabled: maybe}}")
        self.assertEqual(exc.key, "exporters.prometheus.enabled")
        self.assertIn("true or false", exc.why)

    def test_bool_where_float(self) -> None:
        exc = self.error("meters: {grid: {source: {type: simulator, pv_peak: no}}}")
        self.assertEqual(exc.key, "meters.grid.source.pv_peak")
        self.assertIn("expected a number", exc.why)

    def test_list_where_string(self) -> None:
        exc = self.error("server: {host: [a, b]}")
        self.assertEqual(exc.key, "server.host")
        self.assertIn("expected a string", exc.why)

    def test_scalar_where_list(self) -> None:
        exc = self.error("server: {cors: {origins: 'https://a.example'}}")
        self.assertEqual(exc.key, "server.cors.origins")
        self.assertIn("expected a list", exc.why)

    def test_wrong_list_item_has_index(self) -> None:
        exc = self.error("devices: [{type: shelly_pro_3em, mdns: {addresses: [10.0.0.1, [x]]}}]")
        self.assertEqual(exc.key, "devices[0].mdns.addresses[1]")

    def test_scalar_where_section(self) -> None:
        exc = self.error("server: 8080")
        self.assertEqual(exc.key, "server")
        self.assertEqual(exc.why, "expected a mapping; got 8080")

    def test_devices_not_a_list(self) -> None:
        exc = self.error("devices: {type: shelly_pro_3em}")
        self.assertEqual(exc.key, "devices")
        self.assertIn("expected a list", exc.why)

    def test_literal(self) -> None:
        exc = self.error("logging: {level: verbose}")
        self.assertEqual(exc.key, "logging.level")
        self.assertEqual(exc.why, "expected one of debug, info, warn, error, critical; got 'verbose'")

    def test_literal_with_suggestion(self) -> None:
        exc = self.error("logging: {level: warning}")
        self.assertIn("did you mean 'warn'?", exc.why)

    def test_device_literal(self) -> None:
        exc = self.error("devices: [{type: shelly_pro_3em, profile: threephase}]")
        self.assertEqual(exc.key, "devices[0].profile")
        self.assertIn("triphase, monophase", exc.why)

    def test_port_out_of_range(self) -> None:
        exc = self.error("server: {http_port: 70000}")
        self.assertEqual(exc.key, "server.http_port")
        exc = self.error("devices: [{type: shelly_pro_3em, http_port: 70000}]")
        self.assertEqual(exc.key, "devices[0].http_port")
        self.assertIn("0-65535", exc.why)


class RequiredAndSemanticTests(ConfigTestMixin, SynchronousTestCase):
    def test_source_without_type(self) -> None:
        exc = self.error("meters: {grid: {source: {interval: 1s}}}")
        self.assertEqual(exc.key, "meters.grid.source.type")
        self.assertIn("required key is missing", exc.why)
        self.assertIn("simulator", exc.why)

    def test_meter_without_source(self) -> None:
        exc = self.error("meters: {grid: {stale_after: 5s}}")
        self.assertEqual(exc.key, "meters.grid.source")
        self.assertIn("required key is missing", exc.why)

    def test_device_without_type(self) -> None:
        exc = self.error("devices: [{meter: grid}]")
        self.assertEqual(exc.key, "devices[0].type")
        self.assertIn("shelly_pro_3em", exc.why)

    def test_outage_without_duration(self) -> None:
        exc = self.error("meters: {grid: {source: {type: simulator, outages: {every: 1h}}}}")
        self.assertEqual(exc.key, "meters.grid.source.outages.duration")
        self.assertEqual(exc.why, "required key is missing (a duration like 500ms, 2s, 10m or 1h)")

    def test_unknown_source_type(self) -> None:
        exc = self.error("meters: {grid: {source: {type: simulater}}}")
        self.assertEqual(exc.key, "meters.grid.source.type")
        self.assertIn("unknown source type 'simulater'", exc.why)
        self.assertIn("did you mean 'simulator'?", exc.why)

    def test_unknown_device_type(self) -> None:
        exc = self.error("devices: [{type: shely}]")
        self.assertEqual(exc.key, "devices[0].type")
        self.assertIn("did you mean 'shelly_pro_3em'?", exc.why)

    def test_device_references_unknown_meter(self) -> None:
        exc = self.error("""
            meters: {grid: {source: {type: simulator}}}
            devices:
              - {type: shelly_pro_3em, meter: grid}
              - {type: shelly_pro_3em, meter: house, http_port: 8081}
        """)
        self.assertEqual(exc.key, "devices[1].meter")
        self.assertIn("unknown meter 'house'", exc.why)
        self.assertIn("grid", exc.why)

    def test_two_devices_on_one_port(self) -> None:
        exc = self.error("""
            server: {http_port: 8080}
            devices:
              - {type: shelly_pro_3em}
              - {type: shelly_pro_3em, http_port: 8081}
              - {type: shelly_pro_3em, http_port: 8080}
        """)
        self.assertEqual(exc.key, "devices[2].http_port")
        self.assertIn("port 8080 already serves devices[0]", exc.why)

    def test_devices_on_distinct_ports(self) -> None:
        config = self.load("""
            server: {http_port: 8080}
            devices:
              - {type: shelly_pro_3em}
              - {type: shelly_pro_3em, http_port: 8081}
        """)
        self.assertEqual([d.options.http_port for d in config.devices], [None, 8081])

    def test_bad_meter_name(self) -> None:
        exc = self.error("meters: {'my grid': {source: {type: simulator}}}")
        self.assertEqual(exc.key, "meters.my grid")

    def test_no_meters_but_implicit_device(self) -> None:
        exc = self.error("meters: {}")
        self.assertEqual(exc.key, "meters")
        self.assertIn("devices: []", exc.why)

    def test_no_meters_and_explicit_device(self) -> None:
        exc = self.error("meters: {}\ndevices: [{type: shelly_pro_3em}]")
        self.assertEqual(exc.key, "devices[0].meter")

    def test_stale_after_must_be_positive(self) -> None:
        exc = self.error("meters: {grid: {source: {type: simulator}, stale_after: 0s}}")
        self.assertEqual(exc.key, "meters.grid.stale_after")

    def test_persist_interval_must_be_positive(self) -> None:
        exc = self.error("store: {persist_interval: 0}")
        self.assertEqual(exc.key, "store.persist_interval")

    def test_simulator_validate_errors_have_key_paths(self) -> None:
        cases = {
            "speed: 0": ("meters.grid.source.speed", "expected a number greater than 0"),
            "interval: 0s": ("meters.grid.source.interval", "expected a duration greater than 0"),
            "pv_peak: -1": ("meters.grid.source.pv_peak", "expected watts, 0 or more"),
            "base_load: -5": ("meters.grid.source.base_load", "expected watts, 0 or more"),
            "start_time: '25:00'": ("meters.grid.source.start_time", None),
            "outages: {every: 1m, duration: 2m}": ("meters.grid.source.outages.duration", None),
        }
        for line, (key, why) in cases.items():
            with self.subTest(line=line):
                exc = self.error(f"meters:\n  grid:\n    source:\n      type: simulator\n      {line}\n")
                self.assertEqual(exc.key, key)
                self.assertTrue(exc.why.startswith("expected "), exc.why)
                if why is not None:
                    self.assertEqual(exc.why, why)

    def test_full_simulator_options(self) -> None:
        config = self.load("""
            meters:
              grid:
                source:
                  type: simulator
                  interval: 2s
                  seed: 9
                  start_time: "06:30"
                  speed: 60
                  base_load: 300
                  pv_peak: 0
                  outages: {every: 10m, duration: 30s}
        """)
        self.assertEqual(config.meters["grid"].source.options, SimulatorOptions(
            interval=2.0, seed=9, start_time="06:30", speed=60.0, base_load=300.0, pv_peak=0.0,
            outages=OutageOptions(every=600.0, duration=30.0)))


class OnStaleAndIdentityTests(ConfigTestMixin, SynchronousTestCase):
    def on_stale(self, text: str) -> object:
        return self.load(f"devices: [{{type: shelly_pro_3em, on_stale: {text}}}]").devices[0].options.on_stale

    def test_default_is_error(self) -> None:
        self.assertEqual(self.load("devices: [{type: shelly_pro_3em}]").devices[0].options.on_stale, "error")

    def test_hold(self) -> None:
        self.assertEqual(self.on_stale("hold"), "hold")

    def test_fallback(self) -> None:
        self.assertEqual(self.on_stale("{fallback: 100}"), FallbackPolicy(fallback=100.0))

    def test_bogus(self) -> None:
        exc = self.error("devices: [{type: shelly_pro_3em, on_stale: bogus}]")
        self.assertEqual(exc.key, "devices[0].on_stale")
        self.assertEqual(exc.why, "expected one of error, hold or a mapping; got 'bogus'")

    def test_fallback_not_a_number(self) -> None:
        exc = self.error("devices: [{type: shelly_pro_3em, on_stale: {fallback: lots}}]")
        self.assertEqual(exc.key, "devices[0].on_stale.fallback")
        self.assertIn("expected a number", exc.why)

    def test_fallback_missing_watts(self) -> None:
        exc = self.error("devices: [{type: shelly_pro_3em, on_stale: {}}]")
        self.assertEqual(exc.key, "devices[0].on_stale.fallback")
        self.assertIn("required key is missing", exc.why)

    def test_mac_forms(self) -> None:
        for mac in ("auto", "C8F09E0A1B2C", "c8:f0:9e:0a:1b:2c"):
            with self.subTest(mac=mac):
                config = self.load(f"devices: [{{type: shelly_pro_3em, mac: '{mac}'}}]")
                self.assertEqual(config.devices[0].options.mac, mac)

    def test_bad_mac(self) -> None:
        for mac in ("C8F09E0A1B", "C8F09E0A1B2G", "C8F09E0A1B2C3D", ""):
            with self.subTest(mac=mac):
                exc = self.error(f"devices: [{{type: shelly_pro_3em, mac: '{mac}'}}]")
                self.assertEqual(exc.key, "devices[0].mac")
                self.assertIn("12 hex digits", exc.why)

    def test_bad_fw_id(self) -> None:
        exc = self.error("devices: [{type: shelly_pro_3em, fw_id: '1.6.1'}]")
        self.assertEqual(exc.key, "devices[0].fw_id")

    def test_mdns_forms(self) -> None:
        load = self.load
        self.assertIs(load("devices: [{type: shelly_pro_3em}]").devices[0].options.mdns, False)
        self.assertIs(load("devices: [{type: shelly_pro_3em, mdns: true}]").devices[0].options.mdns, True)
        mdns = load("devices: [{type: shelly_pro_3em, mdns: {hostname: meter, port: 80}}]").devices[0].options.mdns
        self.assertEqual(mdns, MdnsOptions(hostname="meter", port=80))

    def test_mdns_wrong_type(self) -> None:
        exc = self.error("devices: [{type: shelly_pro_3em, mdns: 3}]")
        self.assertEqual(exc.key, "devices[0].mdns")
        self.assertEqual(exc.why, "expected true or false or a mapping; got 3")


class DefaultsTests(ConfigTestMixin, SynchronousTestCase):
    def test_no_meters_key_gives_simulated_grid_and_one_shelly(self) -> None:
        config = self.load("server: {http_port: 8080}")
        self.assertEqual(list(config.meters), ["grid"])
        self.assertEqual(config.meters["grid"].source.type, "simulator")
        self.assertEqual(config.meters["grid"].source.options, SimulatorOptions())
        self.assertEqual(len(config.devices), 1)
        self.assertEqual(config.devices[0].type, "shelly_pro_3em")
        self.assertEqual(config.devices[0].options.meter, "grid")
    def test_device_meter_defaults_to_first_meter(self) -> None:
        config = self.load("""
            meters:
              house: {source: {type: simulator}}
              garage: {source: {type: simulator}}
            devices: [{type: shelly_pro_3em}]
        """)
        self.assertEqual(config.devices[0].options.meter, "house")

    def test_empty_devices_list(self) -> None:
        config = self.load("devices: []")
        self.assertEqual(config.devices, ())
        self.assertEqual(list(config.meters), ["grid"])

    def test_default_config(self) -> None:
        config = default_config()
        self.assertEqual(config.server.http_port, 8080)
        self.assertEqual(list(config.meters), ["grid"])
        self.assertEqual(config.meters["grid"].source.type, "simulator")
        self.assertEqual([d.options.meter for d in config.devices], ["grid"])
        self.assertEqual(config.logging.level, "info")

    def test_section_defaults(self) -> None:
        config = self.load("")
        self.assertEqual(config.logging.level, "info")
        self.assertEqual(config.server.host, "0.0.0.0")
        self.assertEqual(config.server.http_port, 80)
        self.assertIs(config.server.cors.enabled, False)
        self.assertEqual(config.server.cors.origins, ("*",))
        self.assertIs(config.exporters.prometheus.enabled, True)
        self.assertEqual(config.store.persist_interval, 30.0)
        self.assertIsNone(config.meters["grid"].stale_after)

    def test_null_section_is_defaults(self) -> None:
        config = self.load("server:\nlogging:\n")
        self.assertEqual(config.server.http_port, 80)

    def test_logging_level(self) -> None:
        self.assertEqual(self.load("logging: {level: debug}").logging.level, "debug")

    def test_config_is_frozen(self) -> None:
        config = self.load("")
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, config, "path", "x")
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, config.server, "http_port", 1)

    def test_path_recorded(self) -> None:
        path = self.write("")
        self.assertEqual(load_config(path, env={}).path, path)


class ShippedFilesTests(SynchronousTestCase):
    def test_example_loads(self) -> None:
        config = load_config(os.path.join(ETC, "meteremu.example.yaml"), env={})
        self.assertEqual(config.server.http_port, 8080)
        self.assertGreaterEqual(len(config.devices), 2)
        self.assertIsNotNone(config.meters["grid"].source.options.outages)
        self.assertIsInstance(config.devices[0].options.mdns, MdnsOptions)
        policies = {type(d.options.on_stale) for d in config.devices}
        self.assertIn(FallbackPolicy, policies)

    def test_example_ports_are_unprivileged(self) -> None:
        config = load_config(os.path.join(ETC, "meteremu.example.yaml"), env={})
        ports = [config.server.http_port]
        for device in config.devices:
            ports += [p for p in (getattr(device.options, "http_port", None),
                                  getattr(device.options, "modbus_port", None),
                                  getattr(device.options, "udp_port", None)) if p]
        self.assertTrue(all(p >= 1024 for p in ports), ports)

    def test_example_documents_every_option(self) -> None:
        """Every field of every option dataclass appears as a key in an example.

        The dataclasses are found from ``Config`` and the device and exporter
        registries (etc/meteremu.example.yaml) and from each source type
        (etc/examples/<type>.yaml), following nested dataclass fields, so a
        new option fails here until it is documented.
        """
        from meteremu.devices import option_types as device_types
        from meteremu.exporters import option_types as exporter_types
        from meteremu.sources import option_types as source_types

        def missing(path: str, roots: list[type]) -> list[str]:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            return [f"{cls.__name__}.{name}" for cls, name in option_fields(roots)
                    if not (cls is Config and name == "path")
                    if not (cls.__name__ == "ExportersOptions" and name == "others")
                    if not re.search(rf"(?m)(^\s*(- )?|[{{,]\s*){name}:", text)]

        self.assertEqual(missing(os.path.join(ETC, "meteremu.example.yaml"),
                                 [Config, *device_types().values(), *exporter_types().values()]),
                         [], "options missing from etc/meteremu.example.yaml")
        for kind, options in source_types().items():
            path = os.path.join(ETC, "examples", f"{kind}.yaml")
            self.assertTrue(os.path.exists(path), f"no example for source type {kind}: {path}")
            self.assertEqual(missing(path, [options]), [], f"options missing from {path}")

    def test_source_examples_load(self) -> None:
        from meteremu.config import load_meter_file
        from meteremu.sources import SOURCE_MODULES

        env = {"HA_TOKEN": "t", "ENVOY_TOKEN": "t", "HOMEWIZARD_TOKEN": "t", "MQTT_PASSWORD": "p",
               "TIBBER_BRIDGE_PASSWORD": "p", "ESPHOME_KEY": "px7tsbK3C7bpXHr2OevEV2ZMg/FrNBw2+O2pNPbedtA="}
        for kind in SOURCE_MODULES:
            meter = load_meter_file(os.path.join(ETC, "examples", f"{kind}.yaml"), env=env)
            self.assertEqual(meter.source.type, kind)

    def test_runnable_config_loads(self) -> None:
        config = load_config(os.path.join(ETC, "meteremu.yaml"), env={})
        self.assertGreaterEqual(config.server.http_port, 1024)
        self.assertEqual(len(config.devices), 1)
        self.assertEqual(config.devices[0].options.meter, "grid")
        options = config.devices[0].options
        ports = [config.server.http_port, options.modbus_port, *options.udp_ports]
        self.assertTrue(all(port >= 1024 for port in ports), ports)  # runs as any user
        self.assertTrue(options.udp_ports and options.websocket and options.modbus_port)
        # the demo shows the whole mission: a forecast, trained on the simulator's backfill
        self.assertTrue(config.forecast.enabled)
        self.assertEqual(config.meters["grid"].source.type, "simulator")
        self.assertEqual(config.meters["grid"].source.options.backfill, 14 * 86400.0)

    def test_pi_config_loads(self) -> None:
        config = load_config(os.path.join(ETC, "meteremu.pi.yaml"), env={})
        options = config.devices[0].options
        self.assertEqual((config.server.http_port, options.udp_ports, options.modbus_port), (80, (1010, 2220), 502))
        self.assertEqual(options.mdns.interfaces, ("eth0",))
        self.assertEqual(config.store.path, "/var/lib/meteremu/state.db")
        self.assertFalse(config.forecast.enabled)  # the user's choice: off until turned on
        self.assertIsNone(config.meters["grid"].source.options.backfill)  # never for a real meter


class TapTests(ConfigTestMixin, SynchronousTestCase):
    def test_bad_file_exits_2_with_one_line(self) -> None:
        path = self.write("server: {http_prot: 8080}\n")
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        exc = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--config", path])
        self.assertEqual(exc.code, 2)
        self.assertEqual(
            stderr.getvalue(),
            f"meteremu: {path}: server.http_prot: unknown key; did you mean 'http_port'?\n")

    def test_syntax_error_exits_2_with_one_line(self) -> None:
        path = self.write("server: [\n")
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        exc = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--config", path])
        self.assertEqual(exc.code, 2)
        out = stderr.getvalue()
        self.assertTrue(out.startswith(f"meteremu: {path}: line "), out)
        self.assertEqual(out.count("\n"), 1)
        self.assertTrue(out.endswith("\n"))
        self.assertNotIn("Traceback", out)

    def test_good_file(self) -> None:
        path = self.write("server: {http_port: 8089}\n")
        options = tap.Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options["settings"].server.http_port, 8089)

    def test_no_config_is_the_embedded_default(self) -> None:
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["settings"].server.http_port, 8080)
