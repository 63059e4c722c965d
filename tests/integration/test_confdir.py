"""conf.d meters: loaded at start, hot reloaded while running (issue: many meters)."""

from __future__ import annotations

import os

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from meteremu.confdir import ConfDirWatcher
from tests.support import start_app, test_config
from tests.support.shared.confdir import write

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h"}}}


class HotReloadTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.app = yield start_app(self, test_config(
            self.mktemp(), meters=SIM, devices=[{"type": "shelly_pro_3em", "meter": "grid"}]))
        self.clock = Clock()
        self.watcher = ConfDirWatcher(self.dir, self.app.manager, self.clock, debounce=1.0, poll_interval=0.5)
        self.app.watcher = self.watcher
        self.watcher.startService()
        self.addCleanup(self.watcher.stopService)
        self.errors = []
        from twisted.logger import globalLogPublisher

        def observe(event):
            if event.get("log_namespace") == "meteremu.confdir" and event.get("log_level").name == "error":
                self.errors.append(event["error"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def settle(self, seconds: float = 1.5) -> None:
        for _ in range(int(seconds / 0.5)):
            self.clock.advance(0.5)

    def test_create_change_invalid_delete_recreate(self):
        added = []
        removed = []
        self.app.meters.subscribe(lambda m: added.append(m.name), lambda m: removed.append(m.name))
        write(self.dir, "heat.yaml", "source: {type: simulator, interval: 1h, seed: 2}\n")
        self.clock.advance(0.5)
        self.assertNotIn("heat", self.app.meters)  # debounce: not yet
        self.settle()
        self.assertIn("heat", self.app.meters)
        meter = self.app.meters["heat"]
        self.assertIsNotNone(meter.latest)  # its source is running
        source = self.app.sources["heat"]
        self.assertTrue(source.running)

        write(self.dir, "heat.yaml", "source: {type: simulator, interval: 1h, seed: 3}\nstale_after: 42s\n")
        self.settle()
        self.assertIs(self.app.meters["heat"], meter)  # same meter: counters, devices carry on
        self.assertEqual(meter.stale_after, 42.0)
        self.assertIsNot(self.app.sources["heat"], source)
        self.assertFalse(source.running)
        self.assertTrue(self.app.sources["heat"].running)
        self.assertTrue(self.app.sources["grid"].running)  # other meters untouched

        running = self.app.sources["heat"]
        write(self.dir, "heat.yaml", "source: {type: simulatr}\n")
        self.settle()
        self.assertIs(self.app.sources["heat"], running)  # the running meter keeps going
        self.assertTrue(running.running)
        self.assertEqual(len(self.errors), 1)
        self.assertIn("heat.yaml: source.type: unknown source type 'simulatr'", self.errors[0])
        self.assertIn("heat", self.app.overview()["config_errors"])

        os.remove(os.path.join(self.dir, "heat.yaml"))
        self.settle()
        self.assertNotIn("heat", self.app.meters)
        self.assertFalse(running.running)
        self.assertEqual(removed, ["heat"])

        write(self.dir, "heat.yaml", "source: {type: simulator, interval: 1h}\n")
        self.settle()
        self.assertIs(self.app.meters["heat"], meter)  # revived with its counters
        self.assertEqual(added, ["grid", "heat", "heat"])

    def test_debounce_applies_a_burst_once(self):
        for seed in range(5):
            write(self.dir, "burst.yaml", f"source: {{type: simulator, interval: 1h, seed: {seed}}}\n")
            self.clock.advance(0.5)
        self.assertNotIn("burst", self.app.meters)
        self.settle()
        self.assertEqual(self.app.sources["burst"].options.seed, 4)  # the last version only
        self.assertEqual(len([n for n in self.app.meters if n == "burst"]), 1)

    def test_main_file_meter_cannot_be_redefined(self):
        source = self.app.sources["grid"]
        write(self.dir, "grid.yaml", "source: {type: simulator}\n")
        self.settle()
        self.assertIs(self.app.sources["grid"], source)
        self.assertIn("defined in the main config file already", self.errors[0])
        os.remove(os.path.join(self.dir, "grid.yaml"))
        self.settle()
        self.assertIn("grid", self.app.meters)


class HostileFileTests(TestCase):
    """A huge conf.d file is refused unread; an unchanged one is not read again (issue #22.13)."""

    timeout = 30

    @inlineCallbacks
    def test_a_huge_file_is_refused_and_unchanged_files_are_not_reread(self):
        from meteremu import confdir as confdir_module

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        app = yield start_app(self, test_config(self.mktemp(), meters=SIM, devices=[]))
        clock = Clock()
        watcher = ConfDirWatcher(directory, app.manager, clock, debounce=0.0, poll_interval=1.0)
        watcher.startService()
        self.addCleanup(watcher.stopService)
        reads: list[str] = []
        real = confdir_module.digest
        self.patch(confdir_module, "digest", lambda path, size: (reads.append(path), real(path, size))[1])
        write(directory, "heat.yaml", "source: {type: simulator, interval: 1h, seed: 4}\n")
        clock.advance(1.0)
        self.assertIn("heat", app.meters)
        self.assertEqual(len(reads), 1)
        for _ in range(5):
            clock.advance(1.0)
        self.assertEqual(len(reads), 1, "an unchanged file was read again")
        huge = os.path.join(directory, "huge.yaml")
        with open(huge, "wb") as handle:
            handle.truncate(50 * 1024 * 1024)  # 50 MB (sparse: it costs no disk)
        clock.advance(1.0)
        self.assertNotIn("huge", app.meters)
        self.assertIn("larger than 16384 bytes", watcher.errors["huge"])
        self.assertTrue(real(huge, os.path.getsize(huge)).startswith("too large"))  # never opened
        self.assertIn("heat", app.meters)  # the others keep going


class PublicErrorTests(TestCase):
    """/admin/overview never shows what is in a file (issue #22.17): it is not authenticated."""

    timeout = 30

    @inlineCallbacks
    def test_a_symlink_to_a_secret_shows_the_file_name_only(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        secret = os.path.abspath(self.mktemp())
        with open(secret, "w", encoding="ascii") as handle:
            handle.write("root:$6$s3cr3t-hash:19000:0:99999:7:::\n")
        os.symlink(secret, os.path.join(directory, "shadow.yaml"))
        app = yield start_app(self, test_config(self.mktemp(), meters=SIM, devices=[]))
        clock = Clock()
        watcher = ConfDirWatcher(directory, app.manager, clock, debounce=0.0, poll_interval=1.0)
        app.watcher = watcher
        watcher.startService()
        self.addCleanup(watcher.stopService)
        clock.advance(1.0)
        self.assertIn("s3cr3t", watcher.errors["shadow"])  # the log may say what is wrong...
        shown = app.overview()["config_errors"]
        self.assertEqual(list(shown), ["shadow"])
        self.assertNotIn("s3cr3t", shown["shadow"])  # ...the endpoint only which file
        self.assertNotIn("root", shown["shadow"])
