"""conf.d meters: loaded at start, hot reloaded while running (issue: many meters)."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from meteremu.confdir import checksums, diff
from meteremu.config import ConfigError, load_config
from tests.support.shared.confdir import write


class LoadTests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        write(self.dir, "main.yaml", "meters:\n  grid: {source: {type: simulator}}\ndevices: []\n")

    def test_files_add_meters(self):
        write(os.path.join(self.dir, "conf.d"), "heatpump.yaml", "source: {type: simulator, seed: 4}\nstale_after: 20s\n")
        write(os.path.join(self.dir, "conf.d"), "notes.txt", "ignored")
        config = load_config(os.path.join(self.dir, "main.yaml"), env={})
        self.assertEqual(list(config.meters), ["grid", "heatpump"])
        self.assertEqual(config.meters["heatpump"].stale_after, 20.0)
        self.assertEqual(config.meters["heatpump"].source.options.seed, 4)
        self.assertEqual(config.conf_dir, os.path.join(self.dir, "conf.d"))

    def test_error_names_the_meter_file(self):
        path = os.path.join(self.dir, "conf.d", "heat.yaml")
        write(os.path.dirname(path), "heat.yaml", "source: {type: simulator, sped: 2}\n")
        err = self.assertRaises(ConfigError, load_config, os.path.join(self.dir, "main.yaml"), {})
        self.assertEqual(str(err), f"{path}: source.sped: unknown key; did you mean 'speed'?")

    def test_duplicate_meter(self):
        write(os.path.join(self.dir, "conf.d"), "grid.yaml", "source: {type: simulator}\n")
        err = self.assertRaises(ConfigError, load_config, os.path.join(self.dir, "main.yaml"), {})
        self.assertEqual(err.key, "meters.grid")

    def test_conf_dir_null_and_custom(self):
        write(os.path.join(self.dir, "meters"), "x.yaml", "source: {type: simulator}\n")
        write(self.dir, "a.yaml", "conf_dir: meters\ndevices: []\n")
        self.assertIn("x", load_config(os.path.join(self.dir, "a.yaml"), env={}).meters)
        write(self.dir, "b.yaml", "conf_dir: null\nmeters: {}\ndevices: []\n")
        self.assertEqual(load_config(os.path.join(self.dir, "b.yaml"), env={}).meters, {})


class DiffTests(SynchronousTestCase):
    def test_diff(self):
        changes = diff({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "9", "d": "4"})
        self.assertEqual((changes.created, changes.changed, changes.deleted), (["d"], ["b"], ["c"]))

    def test_checksums_by_content_not_mtime(self):
        directory = os.path.abspath(self.mktemp())
        write(directory, "m.yaml", "x")
        before = checksums(directory)
        os.utime(os.path.join(directory, "m.yaml"), (0, 0))
        self.assertEqual(checksums(directory), before)
        write(directory, "m.yaml", "y")
        self.assertNotEqual(checksums(directory), before)
