"""Durable state in SQLite: energy counters, generated MACs, later more.

Reads happen once, synchronously, while the service tree is built (before the
reactor runs), because identities such as an auto-generated MAC must be known
before any listener starts. Writes go through ``twisted.enterprise.adbapi``
with a single connection (SQLite allows one writer; one connection also keeps
writes ordered), each save in one transaction, in WAL mode with
``synchronous=FULL`` so a crash or power cut leaves either the old or the new
state, never a torn one.

A file that is not a database, or a corrupt one, is moved aside
(``.corrupt-<ts>``) with a clear log line, never silently overwritten. Any
other failure (disk full, I/O error, no permission, locked by another
process) is not the file's fault: start-up stops with one line naming the
file and the cause (:class:`StoreError`; systemd retries) and the file is
left exactly as it was, so counters and the device's MAC are never lost to a
passing problem.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from meteremu.interfaces import IReactorTime
from meteremu.logs import logger

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated REAL NOT NULL
)
"""

log: Logger = logger(__name__)


class StoreError(Exception):
    """The store cannot be used now; the message names the file and the cause."""


class _Corrupt(Exception):
    """The file is not a usable database: move it aside."""


class NonFinite(ValueError):
    """A stored number is NaN or infinite (JSON has no such numbers)."""


def _refuse_constant(name: str) -> float:
    raise NonFinite(name)


def is_corruption(error: sqlite3.Error) -> bool:
    """SQLite's own verdict: the file is damaged or not a database (not a passing problem)."""
    name = getattr(error, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def _connect(path: str, timeout: float = 10.0) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _check(path: str, timeout: float = 10.0, dropped: list[str] | None = None) -> dict[str, Any]:
    """Open, verify and read everything; :class:`_Corrupt` if the file is unusable."""
    try:
        return _read(path, timeout, dropped if dropped is not None else [])
    except sqlite3.Error as exc:
        if is_corruption(exc):
            raise _Corrupt(str(exc)) from exc
        raise


def _read(path: str, timeout: float, dropped: list[str]) -> dict[str, Any]:
    conn = _connect(path, timeout)
    try:
        row = conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise _Corrupt(f"integrity check failed: {row[0] if row else 'no answer'}")
        conn.execute(SCHEMA)
        conn.commit()
        values = {}
        for key, value in conn.execute("SELECT key, value FROM kv"):
            try:
                values[key] = json.loads(value, parse_constant=_refuse_constant)
            except NonFinite:
                # One value that can never be saved again (NaN, Infinity):
                # that key starts over, the rest of the state is kept.
                log.error("store {path}: {key} held a non-finite number; it starts over", path=path, key=key)
                dropped.append(key)
            except ValueError as exc:
                raise _Corrupt(f"value of {key!r} is not JSON") from exc
        return values
    finally:
        conn.close()


def open_state(path: str, now: Callable[[], float] = time.time, timeout: float = 10.0,
               dropped: list[str] | None = None) -> dict[str, Any]:
    """Load every stored value; move a corrupt file aside and start empty.

    Raises :class:`StoreError` (the file untouched) for anything else. Keys
    whose value can never be saved again (NaN, Infinity) are left out and
    named in ``dropped``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        _create_private(path)
    except OSError as exc:
        raise StoreError(f"store {path}: cannot create it: {exc.strerror or exc}") from None
    try:
        return _check(path, timeout, dropped)
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorname", None)
        raise StoreError(f"store {path}: cannot be used now ({exc}{', ' + code if code else ''}); "
                         f"the file is left as it is") from None
    except OSError as exc:
        raise StoreError(f"store {path}: cannot be read ({exc.strerror or exc}); the file is left as it is") from None
    except _Corrupt as exc:
        aside = f"{path}.corrupt-{int(now())}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.replace(path + suffix, aside + suffix)
        log.error("store {path} could not be read ({why}); moved it to {aside} and started empty",
                  path=path, why=str(exc), aside=aside)
        _create_private(path)
        _check(path)
        return {}


def _create_private(path: str) -> None:
    """Create the file owner-only (it may hold an Envoy token); SQLite gives
    its -wal/-shm files the same permissions.

    Created by root in a directory that belongs to someone else (twistd
    ``--uid``: the tree is built as root, privileges are dropped after the
    ports are bound), the file is given to the directory's owner, who runs
    the service from then on and must be able to write it.
    """
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return
    if os.geteuid() == 0:
        owner = os.stat(os.path.dirname(os.path.abspath(path)))
        if owner.st_uid != 0:
            os.chown(path, owner.st_uid, owner.st_gid)


def encode(items: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """``(JSON text per key, why per key that cannot be saved)``.

    Each key on its own: one part whose snapshot holds a NaN (or anything
    else JSON cannot carry) must not stop every other part from being saved.
    """
    texts: dict[str, str] = {}
    bad: dict[str, str] = {}
    for key, value in items.items():
        try:
            texts[key] = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            bad[key] = f"{type(exc).__name__}: {str(exc)[:80]}"
    return texts, bad


def _write(txn: Any, texts: dict[str, str], stamp: float) -> None:
    txn.executemany(
        "INSERT INTO kv(key, value, updated) VALUES (?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated=excluded.updated",
        [(k, text, stamp) for k, text in texts.items()],
    )


class Store(Service):
    """The state file plus a periodic, transactional save of registered parts.

    Parts register a ``snapshot()`` callable under a key; every
    ``persist_interval`` and on stop the store writes all snapshots in one
    transaction. ``values`` holds what was loaded at open time.
    """

    name = "store"

    def __init__(self, path: str, persist_interval: float, clock: IReactorTime | None = None) -> None:
        self.path = path
        self.persist_interval = persist_interval
        dropped: list[str] = []
        self.values = open_state(path, dropped=dropped)
        # What /healthz reports: keys that were reset (loaded, but unusable),
        # keys that cannot be saved, and whether the last save worked.
        self.problems: dict[str, str] = {key: "held a non-finite number; reset" for key in dropped}
        self.last_save_error: str | None = None
        self._parts: dict[str, Callable[[], Any]] = {}
        self._pending: dict[str, Any] = {}
        self._pool: adbapi.ConnectionPool | None = None
        self._loop: LoopingCall | None = None
        self._clock = clock
        self._saving: Deferred[None] | None = None
        self.saves = 0

    def register(self, key: str, snapshot: Callable[[], Any]) -> None:
        """Save ``snapshot()`` under ``key`` at every persist."""
        self._parts[key] = snapshot

    def put(self, key: str, value: Any) -> None:
        """Save a value now, e.g. a generated MAC.

        Written at once (or as soon as the store starts), not at the next
        periodic persist: a MAC lost to a crash in the first seconds would
        give the device a new identity (and Home Assistant a new device).
        """
        self.values[key] = value
        self._pending[key] = value
        if self._pool is not None:
            self.persist()

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def report(self, key: str, problem: str) -> None:
        """A part found ``key`` unusable and started it over: say so in /healthz."""
        self._problem(key, problem)

    def _problem(self, key: str, problem: str) -> None:
        if self.problems.get(key) != problem:
            log.error("store {path}: {key} {problem}", path=self.path, key=key, problem=problem)
        self.problems[key] = problem

    def health(self) -> dict[str, Any]:
        """For /healthz: ``failing`` (the service is degraded) while the last save
        failed or a part's state cannot be saved; a key that was reset at start
        is listed in ``problems`` but does not degrade."""
        unsaved = any(p.startswith(("cannot be saved", "its snapshot failed")) for p in self.problems.values())
        failing = self.last_save_error is not None or unsaved
        return {"state": "failing" if failing else "ok", "path": self.path,
                "last_save_error": self.last_save_error, "problems": dict(self.problems)}

    def run_interaction(self, interaction: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``interaction(txn, *args)`` in one transaction on the store's single
        connection (off the reactor thread). For parts with tables of their own
        (e.g. the forecast dataset); they create them with CREATE TABLE IF NOT EXISTS.
        """
        if self._pool is None:
            from twisted.internet.defer import fail

            return fail(StoreError("the store is not running"))
        return self._pool.runInteraction(interaction, *args)

    def startService(self) -> None:
        super().startService()
        self._pool = adbapi.ConnectionPool(
            "sqlite3", self.path, cp_min=1, cp_max=1, check_same_thread=False,
            cp_openfun=_init_connection, timeout=10,
        )
        self._loop = LoopingCall(self.persist)
        if self._clock is not None:
            self._loop.clock = self._clock
        self._loop.start(self.persist_interval, now=False).addErrback(
            lambda f: log.failure("persist loop stopped", f))
        if self._pending:  # e.g. a MAC generated while the tree was built
            self.persist()

    def persist(self) -> Deferred[None]:
        """Write every registered snapshot in one transaction.

        A save already running is waited for rather than overlapped, and a
        failing save is logged (the next one retries) instead of killing the loop.
        """
        if self._pool is None:
            return succeed(None)
        if self._saving is not None:
            return self._saving
        items = dict(self._pending)
        for key, snapshot in self._parts.items():
            try:
                items[key] = snapshot()
            except Exception as exc:  # a part's bug costs that part's save, not everyone's
                self._problem(key, f"its snapshot failed ({type(exc).__name__})")
        texts, bad = encode(items)
        for key, why in bad.items():
            self._problem(key, f"cannot be saved ({why})")
            items.pop(key)
        self.values.update(items)
        stamp = time.time()
        d = self._pool.runInteraction(_write, texts, stamp)

        def done(_: object) -> None:
            self.saves += 1
            self.last_save_error = None
            for key in texts:
                if self.problems.get(key, "").startswith(("cannot be saved", "its snapshot failed")):
                    del self.problems[key]
            for key in items:
                if key in self._pending and self._pending[key] is items[key]:
                    del self._pending[key]

        def failed(failure: Any) -> None:
            why = f"{failure.type.__name__}: {str(failure.value)[:120]}"
            if self.last_save_error != why:
                log.failure("saving state to {path} failed; will retry", failure, path=self.path)
            self.last_save_error = why

        d.addCallbacks(done, failed)

        def finished(result: object) -> object:
            self._saving = None
            return result

        d.addBoth(finished)
        self._saving = d
        return d

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        pool = self._pool

        def close(_: object) -> None:
            self._pool = None
            if pool is not None:
                pool.close()

        d = self._saving or succeed(None)
        d.addCallback(lambda _: self.persist())
        d.addCallback(close)
        return d


def _init_connection(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")


class MemoryValues:
    """Values kept in memory only: for a part run without a store (they live until exit)."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values: dict[str, Any] = dict(values or {})

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value
