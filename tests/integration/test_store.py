"""Durable state: transactional saves, reload, corrupt files moved aside,
and counters that continue exactly where they stopped."""

from __future__ import annotations

import json
import os
import sqlite3

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from meteremu import store as store_module
from meteremu.store import Store, open_state
from tests.support import HTTPClient, sample_reading, start_app, test_config

REAL_WRITE = store_module._write

SIM = {"grid": {"source": {"type": "simulator", "interval": "1h"}}}


class StoreServiceTests(TestCase):
    @inlineCallbacks
    def test_periodic_and_final_saves(self):
        path = os.path.join(self.mktemp(), "state.db")
        clock = Clock()
        store = Store(path, 30, clock=clock)
        counter = {"n": 0}
        store.register("counter", lambda: dict(counter))
        store.register("nothing_yet", lambda: None)  # a part with nothing to save yet
        store.put("mac", "C8F09E000001")
        store.startService()
        # The value put before the start is written at once, not 30 s later.
        yield store._saving
        self.assertEqual(open_state(path)["mac"], "C8F09E000001")
        self.assertEqual(store.saves, 1)
        counter["n"] = 1
        clock.advance(29)
        self.assertEqual(store.saves, 1)
        clock.advance(1)
        yield store._saving
        self.assertEqual(open_state(path), {"counter": {"n": 1}, "mac": "C8F09E000001", "nothing_yet": None})
        counter["n"] = 2
        yield store.stopService()
        self.assertEqual(open_state(path)["counter"], {"n": 2})
        self.assertEqual(store.saves, 3)


class CountersSurviveRestartTests(TestCase):
    @inlineCallbacks
    def test_stop_start(self):
        tmp = self.mktemp()
        config = test_config(tmp, meters=SIM)
        app = yield start_app(self, config)
        meter = app.meters["grid"]
        base = meter.latest.measured_at
        for step in (1, 2, 3):
            meter.update(sample_reading(base + step))
        before = meter.energy.to_dict()
        mac = app.devices[0].identity.mac
        self.assertGreater(meter.energy.total_import_wh, 0)
        yield app.service.stopService()
        stored = json.loads(sqlite3.connect(config.store.path).execute(
            "SELECT value FROM kv WHERE key='meter:grid:energy'").fetchone()[0])
        self.assertEqual(stored, before)

        again = yield start_app(self, config)
        self.assertEqual(again.meters["grid"].energy.to_dict(), before)
        self.assertEqual(again.devices[0].identity.mac, mac)  # mac: auto is kept
        # …and they continue from there, never going backwards.
        m2 = again.meters["grid"]
        t = m2.latest.measured_at
        m2.update(sample_reading(t + 1))
        m2.update(sample_reading(t + 2))
        after = m2.energy.to_dict()["phases"]
        for (i0, e0), (i1, e1) in zip(before["phases"], after, strict=True):
            self.assertGreaterEqual(i1, i0)
            self.assertGreaterEqual(e1, e0)
        self.assertGreater(after[0][0], before["phases"][0][0])


class HealthTests(TestCase):
    """Bad stored values are reset and reported; a store that cannot save degrades health (#22.15, .16)."""

    timeout = 30

    @inlineCallbacks
    def test_wrong_shapes_are_reset_and_reported_never_fatal(self):
        directory = os.path.abspath(self.mktemp())
        path = os.path.join(directory, "state.db")
        open_state(path)
        conn = sqlite3.connect(path)
        for key, value in (("meter:grid:energy", {"phases": [["x", 1]]}), ("device:0:mac", 42),
                           ("meter:grid:day_start", {"day": "soon"})):
            conn.execute("INSERT INTO kv VALUES (?, ?, 0)", (key, json.dumps(value)))
        conn.commit()
        conn.close()
        config = test_config(directory, meters={"grid": {"source": {"type": "simulator", "interval": "1h"}}},
                             store={"path": path, "persist_interval": "1h"})
        app = yield start_app(self, config)
        health = app.store.health()
        self.assertEqual(health["state"], "ok")  # reset keys are told, not a failure
        self.assertEqual(sorted(health["problems"]), ["device:0:mac", "meter:grid:day_start", "meter:grid:energy"])
        self.assertIn("counters start from 0", health["problems"]["meter:grid:energy"])
        self.assertRegex(app.devices[0].identity.mac, r"^C8F09E[0-9A-F]{6}$")
        http = HTTPClient(self)
        response, body = yield http.get(f"http://127.0.0.1:{app.http_port()}/healthz")
        self.assertEqual(response.code, 200)
        self.assertIn("meter:grid:energy", json.loads(body)["store"]["problems"])

    @inlineCallbacks
    def test_a_save_that_fails_makes_health_degraded_with_the_reason(self):
        config = test_config(self.mktemp(), meters={"grid": {"source": {"type": "simulator", "interval": "1h"}}})
        app = yield start_app(self, config)
        http = HTTPClient(self)
        url = f"http://127.0.0.1:{app.http_port()}/healthz"
        response, _ = yield http.get(url)
        self.assertEqual(response.code, 200)
        yield app.store.persist()  # a save already running (the new MAC) ends first

        def disk_full(txn, texts, stamp):  # what SQLite raises when the disk is full
            raise sqlite3.OperationalError("database or disk is full")

        self.patch(store_module, "_write", disk_full)
        yield app.store.persist()
        response, body = yield http.get(url)
        self.assertEqual(response.code, 503)
        report = json.loads(body)
        self.assertEqual(report["status"], "degraded")
        self.assertEqual(report["store"]["state"], "failing")
        self.assertIn("disk is full", report["store"]["last_save_error"])
        self.flushLoggedErrors(sqlite3.OperationalError)
        self.patch(store_module, "_write", REAL_WRITE)
        yield app.store.persist()
        response, _ = yield http.get(url)
        self.assertEqual(response.code, 200)  # healthy again once a save works
