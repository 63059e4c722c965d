"""Durable state: transactional saves, reload, corrupt files moved aside,
and counters that continue exactly where they stopped."""

from __future__ import annotations

import glob
import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from meteremu.store import StoreError, open_state


class OpenStateTests(SynchronousTestCase):
    def test_new_file_is_empty(self):
        path = os.path.join(self.mktemp(), "sub", "state.db")
        self.assertEqual(open_state(path), {})
        self.assertTrue(os.path.exists(path))

    def test_new_file_is_owner_only(self):
        # It may hold an Envoy token.
        path = os.path.join(self.mktemp(), "state.db")
        open_state(path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_corrupt_file_is_moved_aside_not_overwritten(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "state.db")
        garbage = b"this is not a database" * 100
        with open(path, "wb") as handle:
            handle.write(garbage)
        self.assertEqual(open_state(path, now=lambda: 1234), {})
        aside = path + ".corrupt-1234"
        with open(aside, "rb") as handle:
            self.assertEqual(handle.read(), garbage)  # kept byte for byte
        self.assertEqual(open_state(path), {})  # and a fresh, valid store is in place

    def test_value_that_is_not_json_is_corruption(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "state.db")
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL)")
        conn.execute("INSERT INTO kv VALUES ('k', '{broken', 0)")
        conn.commit()
        conn.close()
        self.assertEqual(open_state(path, now=lambda: 1), {})
        self.assertEqual(len(glob.glob(path + ".corrupt-1*")), 1)


class TransientErrorTests(SynchronousTestCase):
    """Only real corruption is moved aside; anything else stops start-up, the file untouched."""

    def written(self) -> str:
        path = os.path.join(self.mktemp(), "state.db")
        open_state(path)
        conn = sqlite3.connect(path)
        conn.execute("INSERT INTO kv VALUES ('device:0:mac', '\"C8F09E000001\"', 0)")
        conn.commit()
        conn.close()
        return path

    def test_a_locked_store_is_left_alone(self):
        path = self.written()
        with open(path, "rb") as handle:
            before = handle.read()
        locker = sqlite3.connect(path, isolation_level=None)  # another process holding it
        locker.execute("PRAGMA locking_mode=EXCLUSIVE")
        locker.execute("BEGIN EXCLUSIVE")
        locker.execute("INSERT INTO kv VALUES ('other', '1', 0)")
        try:
            err = self.assertRaises(StoreError, open_state, path, timeout=0.1)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        self.assertIn(path, str(err))
        self.assertIn("locked", str(err))
        self.assertEqual(glob.glob(path + ".corrupt-*"), [])
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(), before)
        self.assertEqual(open_state(path)["device:0:mac"], "C8F09E000001")  # still there

    def test_a_store_that_cannot_be_opened_is_left_alone(self):
        path = os.path.join(self.mktemp(), "state.db")
        os.makedirs(path)  # a directory where the file should be
        err = self.assertRaises(StoreError, open_state, path)
        self.assertIn(path, str(err))
        self.assertIn("left as it is", str(err))
        self.assertTrue(os.path.isdir(path))
        self.assertEqual(glob.glob(path + ".corrupt-*"), [])

    def test_a_directory_that_cannot_be_made_is_one_clear_error(self):
        blocker = self.mktemp()
        with open(blocker, "w", encoding="ascii") as handle:
            handle.write("a file, not a folder")
        err = self.assertRaises(StoreError, open_state, os.path.join(blocker, "state.db"))
        self.assertIn("cannot create it", str(err))

    def test_corruption_is_told_apart(self):
        from meteremu.store import is_corruption

        self.assertTrue(is_corruption(_error("SQLITE_CORRUPT")))
        self.assertTrue(is_corruption(_error("SQLITE_NOTADB")))
        for name in ("SQLITE_FULL", "SQLITE_IOERR_WRITE", "SQLITE_CANTOPEN", "SQLITE_BUSY", "SQLITE_READONLY"):
            self.assertFalse(is_corruption(_error(name)), name)


def _error(name: str) -> sqlite3.Error:
    error = sqlite3.OperationalError("x")
    error.sqlite_errorname = name  # type: ignore[attr-defined]
    return error


class BadValuesTests(SynchronousTestCase):
    """A value that can never be saved again costs its own key, never the store (issue #22.15)."""

    def test_a_stored_infinity_is_dropped_and_reported(self):
        path = os.path.join(self.mktemp(), "state.db")
        open_state(path)
        conn = sqlite3.connect(path)
        conn.execute("INSERT INTO kv VALUES ('meter:grid:energy', '{\"phases\": [[Infinity, 0]]}', 0)")
        conn.execute("INSERT INTO kv VALUES ('device:0:mac', '\"C8F09E000001\"', 0)")
        conn.commit()
        conn.close()
        dropped: list[str] = []
        values = open_state(path, dropped=dropped)
        self.assertEqual(values, {"device:0:mac": "C8F09E000001"})  # the rest is kept
        self.assertEqual(dropped, ["meter:grid:energy"])
        self.assertEqual(glob.glob(path + ".corrupt-*"), [])  # not corruption
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_each_key_is_encoded_on_its_own(self):
        from meteremu.store import encode

        texts, bad = encode({"ok": {"n": 1}, "nan": float("nan"), "set": {1, 2}})
        self.assertEqual(texts, {"ok": '{"n": 1}'})
        self.assertEqual(sorted(bad), ["nan", "set"])

    def test_energy_counters_refuse_a_wrong_shape(self):
        from meteremu.energy import EnergyCounters

        counters = EnergyCounters(3)
        for bad in ({"phases": [["x", 1]]}, {"phases": [[1.0]]}, {"phases": "no"}, [1, 2],
                    {"phases": [[-1.0, 0.0]]}, {"phases": [[True, 0.0]]}, {"phases": [[float("inf"), 0.0]]}):
            self.assertRaises(ValueError, counters.restore, bad)
        self.assertEqual(counters.to_dict(), {"phases": [[0.0, 0.0]] * 3})  # nothing half-applied
        counters.restore({"phases": [[5.0, 1.0], [2, 0]]})
        self.assertEqual(counters.to_dict()["phases"][:2], [[5.0, 1.0], [2.0, 0.0]])
