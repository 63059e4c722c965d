"""The container and add-on entry points' pure parts: config choice, health URL,
file capability bytes, and the add-on options translation (every translated
config is also validated by meteremu's own config loader, so a translation
that meteremu would refuse fails here, not in a user's add-on log)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import parse_config
from meteremu.container import addon, entry, filecaps, healthcheck, warmup
from meteremu.container.addon import AddonOptionError, MqttService, Supervisor, translate

DEFAULT = "/pkg/default.yaml"
INSIDE = Supervisor(url="http://supervisor", token=True, mqtt=None)
BROKER = MqttService(host="core-mosquitto", port=1883, username="addons", password="s3cret-broker")


def exists_only(*paths: str) -> Any:
    return lambda path: path in paths


class ChooseTests(SynchronousTestCase):
    def test_default_when_nothing_given(self) -> None:
        choice = entry.choose({}, exists_only(), DEFAULT)
        self.assertEqual(choice.path, DEFAULT)
        self.assertIn("simulator", choice.origin)

    def test_mounted_file_wins_over_default(self) -> None:
        self.assertEqual(entry.choose({}, exists_only(entry.MOUNTED), DEFAULT).path, entry.MOUNTED)

    def test_environment_path_wins_and_must_exist(self) -> None:
        env = {"METEREMU_CONFIG": "/etc/x.yaml"}
        self.assertEqual(entry.choose(env, exists_only("/etc/x.yaml", entry.MOUNTED), DEFAULT).path,
                         "/etc/x.yaml")
        with self.assertRaises(entry.EntryError) as caught:
            entry.choose(env, exists_only(entry.MOUNTED), DEFAULT)
        self.assertIn("/etc/x.yaml", str(caught.exception))

    def test_inline_yaml_is_written_to_a_private_file(self) -> None:
        choice = entry.choose({"METEREMU_CONFIG_YAML": "logging: {level: warn}\n"}, exists_only(entry.MOUNTED),
                              DEFAULT)
        self.assertIsNone(choice.path)
        path = entry.resolve(choice)
        self.addCleanup(__import__("os").unlink, path)
        with open(path) as written:
            self.assertEqual(written.read(), "logging: {level: warn}\n")
        self.assertEqual(__import__("os").stat(path).st_mode & 0o777, 0o600)

    def test_twistd_runs_in_the_foreground_logging_to_stdout(self) -> None:
        argv = entry.twistd_argv("/c.yaml")
        self.assertEqual(argv[-3:], ["meteremu", "--config", "/c.yaml"])
        self.assertIn("--nodaemon", argv)
        self.assertIn("--logfile=-", argv)

    def test_packaged_default_is_valid_and_uses_the_real_ports_and_the_volume(self) -> None:
        with open(entry.default_path()) as file:
            config = parse_config(yaml.safe_load(file), "default.yaml", env={})
        self.assertEqual(config.server.http_port, 80)
        self.assertEqual(config.store.path, "/data/meteremu.db")
        self.assertEqual(config.meters["grid"].source.type, "simulator")


class WarmupConfigTests(SynchronousTestCase):
    def test_the_build_config_is_the_container_default_with_its_state_moved(self) -> None:
        default = yaml.safe_load(open(entry.default_path(), encoding="utf-8"))
        built = yaml.safe_load(warmup.config_for_build(entry.default_path(), Path("/tmp/scratch")))
        self.assertEqual(built["store"]["path"], "/tmp/scratch/meteremu.db")
        del built["store"]["path"], default["store"]["path"]
        self.assertEqual(built, default)
        parse_config(yaml.safe_load(warmup.config_for_build(entry.default_path(), Path("/tmp/scratch"))), "build")


class HealthUrlTests(SynchronousTestCase):
    def test_wildcard_address_is_asked_on_loopback(self) -> None:
        config = parse_config({"server": {"http_port": 8080}}, "t", env={})
        self.assertEqual(healthcheck.health_url(config), "http://127.0.0.1:8080/healthz")

    def test_a_specific_address_is_asked_there(self) -> None:
        config = parse_config({"server": {"host": "::1", "http_port": 80}}, "t", env={})
        self.assertEqual(healthcheck.health_url(config), "http://[::1]:80/healthz")


class FileCapsTests(SynchronousTestCase):
    def test_net_bind_service_permitted_and_effective_only(self) -> None:
        data = filecaps.vfs_cap_data((filecaps.CAP_NET_BIND_SERVICE,))
        magic, permitted, inheritable, permitted_hi, inheritable_hi = struct.unpack("<IIIII", data)
        self.assertEqual(magic, 0x02000001)  # revision 2, effective
        self.assertEqual(permitted, 1 << 10)
        self.assertEqual((inheritable, permitted_hi, inheritable_hi), (0, 0, 0))

    def test_capabilities_above_31_go_to_the_high_word(self) -> None:
        _, low, _, high, _ = struct.unpack("<IIIII", filecaps.vfs_cap_data((33,)))
        self.assertEqual((low, high), (0, 2))


def valid(tr: addon.Translation) -> Any:
    """The translated config through meteremu's loader, with the secrets as the environment."""
    env = {"SUPERVISOR_TOKEN": "token-from-the-supervisor", **tr.secrets}
    return parse_config(tr.config, "(add-on)", env=env)


class AddonTranslationTests(SynchronousTestCase):
    def test_defaults_run_the_simulator_on_the_real_ports(self) -> None:
        tr = translate({}, Supervisor())
        config = valid(tr)
        self.assertEqual(config.meters["grid"].source.type, "simulator")
        self.assertEqual(config.server.http_port, 80)
        device = config.devices[0]
        self.assertEqual(device.options.udp_ports, (1010, 2220))
        self.assertEqual(device.options.modbus_port, 502)
        self.assertEqual(config.store.path, "/data/meteremu.db")
        self.assertFalse(config.forecast.enabled)
        self.assertNotIn("exporters", tr.config)  # no Supervisor MQTT service: nothing to publish to

    def test_home_assistant_goes_through_the_supervisor_proxy_with_its_token(self) -> None:
        tr = translate({"source": "homeassistant", "ha_power": "sensor.grid_power"}, INSIDE)
        source = tr.config["meters"]["grid"]["source"]
        self.assertEqual(source["url"], "http://supervisor/core")
        self.assertEqual(source["websocket_url"], "ws://supervisor/core/websocket")
        self.assertEqual(source["token"], "${SUPERVISOR_TOKEN}")
        self.assertEqual(source["entities"], {"power": "sensor.grid_power"})
        config = valid(tr)
        self.assertEqual(config.meters["grid"].source.options.token, "token-from-the-supervisor")

    def test_home_assistant_per_phase_and_discovery(self) -> None:
        phases = translate({"source": "homeassistant", "ha_a_power": "sensor.a", "ha_b_power": "sensor.b",
                            "ha_c_power": "sensor.c"}, INSIDE)
        self.assertEqual(phases.config["meters"]["grid"]["source"]["entities"],
                         {"a_power": "sensor.a", "b_power": "sensor.b", "c_power": "sensor.c"})
        valid(phases)
        discover = translate({"source": "homeassistant", "ha_power": ""}, INSIDE)
        self.assertNotIn("entities", discover.config["meters"]["grid"]["source"])
        valid(discover)

    def test_home_assistant_outside_the_supervisor_is_one_clear_error(self) -> None:
        with self.assertRaises(AddonOptionError) as caught:
            translate({"source": "homeassistant"}, Supervisor(token=False))
        self.assertIn("SUPERVISOR_TOKEN", str(caught.exception))

    def test_secrets_never_reach_the_generated_file(self) -> None:
        options = {"source": "envoy", "envoy_host": "192.0.2.10", "envoy_username": "me@example.com",
                   "envoy_password": "hunter2-envoy", "envoy_serial": "122233344455"}
        tr = translate(options, Supervisor(token=True, mqtt=BROKER))
        text = yaml.safe_dump(tr.config)
        for secret in ("hunter2-envoy", "s3cret-broker"):
            self.assertNotIn(secret, text)
            self.assertIn(secret, tr.secrets.values())
        config = valid(tr)
        self.assertEqual(config.meters["grid"].source.options.password, "hunter2-envoy")
        self.assertEqual(config.exporters.others['mqtt'].password, "s3cret-broker")

    def test_envoy_with_a_token(self) -> None:
        tr = translate({"source": "envoy", "envoy_host": "192.0.2.10", "envoy_token": "eyJ.jwt"}, Supervisor())
        self.assertEqual(valid(tr).meters["grid"].source.options.token, "eyJ.jwt")

    def test_dsmr_serial_or_tcp_not_both(self) -> None:
        valid(translate({"source": "dsmr", "dsmr_serial": "/dev/ttyUSB0"}, Supervisor()))
        valid(translate({"source": "dsmr", "dsmr_tcp": "192.0.2.20:2000"}, Supervisor()))
        for options in ({"source": "dsmr"},
                        {"source": "dsmr", "dsmr_serial": "/dev/ttyUSB0", "dsmr_tcp": "192.0.2.20:2000"}):
            with self.assertRaises(AddonOptionError) as caught:
                translate(options, Supervisor())
            self.assertIn("dsmr_serial", str(caught.exception))

    def test_homewizard_v2_with_token_and_v1_without(self) -> None:
        v2 = translate({"source": "homewizard", "homewizard_host": "192.0.2.30", "homewizard_token": "A" * 32},
                       Supervisor())
        self.assertEqual(valid(v2).meters["grid"].source.options.token, "A" * 32)
        v1 = translate({"source": "homewizard", "homewizard_host": "192.0.2.30"}, Supervisor())
        self.assertEqual(valid(v1).meters["grid"].source.options.api, "v1")

    def test_mqtt_source_and_exporter_use_the_supervisor_broker(self) -> None:
        tr = translate({"source": "mqtt", "mqtt_topic": "p1/state", "mqtt_power_path": "$.power"},
                       Supervisor(token=True, mqtt=BROKER))
        config = valid(tr)
        self.assertEqual(config.meters["grid"].source.options.host, "core-mosquitto")
        self.assertTrue(config.exporters.others['mqtt'].enabled)
        self.assertEqual((config.exporters.others['mqtt'].host, config.exporters.others['mqtt'].username),
                         ("core-mosquitto", "addons"))
        with self.assertRaises(AddonOptionError) as caught:
            translate({"source": "mqtt", "mqtt_topic": "p1/state", "mqtt_power_path": "$.power"}, INSIDE)
        self.assertIn("Mosquitto", str(caught.exception))

    def test_publishing_can_be_turned_off(self) -> None:
        tr = translate({"mqtt_publish": False}, Supervisor(token=True, mqtt=BROKER))
        self.assertNotIn("exporters", tr.config)

    def test_device_options(self) -> None:
        config = valid(translate({"udp_ports": [2220], "modbus": False, "mdns": False, "forecast": True,
                                  "log_level": "debug"}, Supervisor()))
        device = config.devices[0].options
        self.assertEqual((device.udp_ports, device.modbus_port, device.mdns), ((2220,), None, False))
        self.assertTrue(config.forecast.enabled)
        self.assertEqual(config.logging.level, "debug")

    def test_custom_config_merges_over_the_options(self) -> None:
        custom = "exporters:\n  prometheus: {enabled: false}\nstore:\n  persist_interval: 5s\n"
        tr = translate({"custom_config": custom}, Supervisor())
        config = valid(tr)
        self.assertEqual(config.store.persist_interval, 5.0)
        self.assertEqual(config.store.path, "/data/meteremu.db")  # merged, not replaced
        self.assertFalse(config.exporters.prometheus.enabled)

    def test_bad_options_name_the_option(self) -> None:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"source": "tibber"}, "option source"),
            ({"log_level": "loud"}, "option log_level"),
            ({"udp_ports": [1010, 70000]}, "option udp_ports"),
            ({"udp_ports": "1010"}, "option udp_ports"),
            ({"mdns": "yes"}, "option mdns"),
            ({"source": "envoy"}, "option envoy_host"),
            ({"source": "envoy", "envoy_host": "e"}, "option envoy_token"),
            ({"source": "homewizard"}, "option homewizard_host"),
            ({"source": "homeassistant", "ha_power": "sensor.p", "ha_a_power": "sensor.a"}, "option ha_power"),
            ({"custom_config": "store: [unclosed"}, "option custom_config: not valid YAML"),
            ({"custom_config": "- a list"}, "option custom_config: expected a mapping"),
            ({"source": "homeassistant", "ha_power": 5}, "option ha_power: expected text"),
        ]
        for options, expected in cases:
            with self.assertRaises(AddonOptionError, msg=repr(options)) as caught:
                translate(options, INSIDE)
            self.assertIn(expected, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))

    def test_merge_replaces_lists_and_merges_mappings(self) -> None:
        self.assertEqual(addon.merge({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"c": [2]}, "e": 2}),
                         {"a": {"b": 1, "c": [2]}, "d": 1, "e": 2})


class SupervisorAnswerTests(SynchronousTestCase):
    def test_services_mqtt_answer(self) -> None:
        answer = {"result": "ok", "data": {"addon": "core_mosquitto", "host": "core-mosquitto", "port": 1883,
                                           "ssl": False, "protocol": "3.1.1", "username": "addons",
                                           "password": "pw"}}
        self.assertEqual(addon.mqtt_service(answer),
                         MqttService(host="core-mosquitto", port=1883, username="addons", password="pw"))

    def test_no_service_or_odd_answers_mean_none(self) -> None:
        for answer in ({"result": "error", "message": "No mqtt service"}, {"result": "ok", "data": {}},
                       {"result": "ok", "data": {"host": "h", "port": "1883"}}, [], None):
            self.assertIsNone(addon.mqtt_service(answer))


class AddonManifestTests(SynchronousTestCase):
    """addon/meteremu/config.yaml, its translations and the translation agree."""

    def setUp(self) -> None:
        import os

        base = os.path.join(os.path.dirname(__file__), "..", "..", "addon", "meteremu")
        with open(os.path.join(base, "config.yaml")) as file:
            self.manifest = yaml.safe_load(file)
        with open(os.path.join(base, "translations", "en.yaml")) as file:
            self.translations = yaml.safe_load(file)["configuration"]

    def test_every_option_has_a_schema_entry_and_a_translation(self) -> None:
        schema = self.manifest["schema"]
        self.assertLessEqual(set(self.manifest["options"]), set(schema))
        self.assertEqual(set(schema), set(self.translations))
        sources = schema["source"][len("list("):-1].split("|")
        self.assertEqual(tuple(sources), addon.SOURCES)
        self.assertEqual(tuple(schema["log_level"][len("list("):-1].split("|")), addon.LOG_LEVELS)

    def test_the_default_options_translate_to_a_valid_config(self) -> None:
        valid(translate(self.manifest["options"], Supervisor()))

    def test_ingress_and_watchdog_use_the_fixed_http_port(self) -> None:
        self.assertEqual(self.manifest["ingress_port"], addon.HTTP_PORT)
        self.assertIn(f"[PORT:{addon.HTTP_PORT}]/healthz", self.manifest["watchdog"])
        self.assertTrue(self.manifest["host_network"])

    def test_version_follows_the_package(self) -> None:
        from meteremu import __version__

        self.assertEqual(self.manifest["version"], __version__)
