"""Hot reload of ``conf.d``: one meter per ``<name>.yaml``, watched by checksum.

Polling (default every second) with sha256 checksums rather than mtimes:
editors that keep mtimes, clocks that jump and network filesystems all fool
mtime checks, and a few small files are cheap to hash. A file is hashed again
only when its size, times or inode moved (a scan is a ``stat`` per file), and
never when it is over the meter file limit (16 KiB): applying it then says so,
unread, and the running meter keeps going. A change is applied
only once the file's content has been stable for ``debounce`` (an editor
writing in several steps is seen once). Created → the meter starts; changed →
just its source restarts; deleted → it stops. An invalid file is logged with
file/key/why and the running meter keeps going.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from meteremu.config import (
    MAX_METER_FILE_BYTES,
    ConfigError,
    conf_dir_files,
    load_meter_file,
    meter_name_for,
)
from meteremu.interfaces import IReactorTime
from meteremu.logs import logger
from meteremu.metermanager import MeterManager

log = logger(__name__)


Signature = tuple[int, int, int, int, int]  # size, mtime_ns, ctime_ns, inode, device


def signature(path: str) -> Signature:
    """What changes whenever the file's content may have (ctime too: an editor
    that restores the mtime cannot restore it)."""
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def digest(path: str, size: int) -> str:
    """sha256 of the file; a file over the size limit is not read (it is refused when applied)."""
    if size > MAX_METER_FILE_BYTES:
        return f"too large:{size}"
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(MAX_METER_FILE_BYTES + 1)).hexdigest()


def checksums(directory: str, known: dict[str, tuple[Signature, str]] | None = None) -> dict[str, str]:
    """``{meter name: sha256 of the file}`` for every meter file now present.

    With ``known`` (path → the signature and digest seen last), a file whose
    signature did not change is not read again: a scan every second costs a
    ``stat`` per file, not a read.
    """
    known = {} if known is None else known
    out = {}
    seen = set()
    for path in conf_dir_files(directory):
        try:
            sig = signature(path)
            entry = known.get(path)
            if entry is None or entry[0] != sig:
                entry = known[path] = (sig, digest(path, sig[0]))
        except OSError:
            continue  # vanished between listing and reading: seen next scan
        seen.add(path)
        out[meter_name_for(path)] = entry[1]
    for gone in set(known) - seen:
        del known[gone]
    return out


@dataclass
class Changes:
    created: list[str]
    changed: list[str]
    deleted: list[str]


def diff(applied: dict[str, str], current: dict[str, str]) -> Changes:
    """What differs between the applied state and the files now (pure)."""
    return Changes(
        created=sorted(n for n in current if n not in applied),
        changed=sorted(n for n in current if n in applied and current[n] != applied[n]),
        deleted=sorted(n for n in applied if n not in current),
    )


class ConfDirWatcher(Service):
    """Polls the directory and hands stable changes to the meter manager."""

    def __init__(self, directory: str, manager: MeterManager, clock: IReactorTime, debounce: float = 1.0,
                 poll_interval: float = 1.0) -> None:
        self.directory, self.manager, self.clock = directory, manager, clock
        self.debounce, self.poll_interval = debounce, poll_interval
        # The state applied at start: the meters load_config read from files.
        self.applied: dict[str, str] = {}
        self._seen: dict[str, tuple[str | None, float]] = {}
        self.errors: dict[str, str] = {}  # meter name -> the full error (the log's; may quote the file)
        self.main_meters: set[str] = set()
        self._known: dict[str, tuple[Signature, str]] = {}
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        try:
            on_disk = checksums(self.directory, self._known)
        except ConfigError as exc:  # readable at load time, not now (twistd --uid?)
            log.error("conf.d: {error}; hot reload is off", error=str(exc))
            return
        meters = self.manager.meters
        self.applied = {name: digest for name, digest in on_disk.items() if name in meters}
        # Meters of the main file: a conf.d file may not redefine them.
        self.main_meters = set(meters) - set(on_disk)
        self._loop = LoopingCall(self.scan)
        self._loop.clock = self.clock
        self._loop.start(self.poll_interval, now=False).addErrback(
            lambda f: log.failure("conf.d watcher stopped", f))

    def public_errors(self) -> dict[str, str]:
        """The errors as ``/admin/overview`` shows them: which file, never what is in it.

        A config error quotes the offending value, and a file is whatever its
        path points to (a symlink to ``/etc/shadow`` would show its first
        line); the endpoint is not authenticated. The log has the details.
        """
        return {name: f"{name}.yaml is not a valid meter file; the service log says why"
                for name in self.errors}

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def scan(self) -> None:
        """One poll: apply whatever has been stable for ``debounce``."""
        try:
            self._scan()
        except Exception:
            log.failure("scanning {dir} failed", dir=self.directory)

    def _scan(self) -> None:
        now = self.clock.seconds()
        current = checksums(self.directory, self._known)
        names = set(current) | set(self.applied)
        for name in names:
            digest = current.get(name)
            seen = self._seen.get(name)
            if seen is None or seen[0] != digest:
                self._seen[name] = (digest, now)  # changed again: restart the debounce
                if self.debounce > 0:
                    continue
            elif now - seen[1] < self.debounce:
                continue
            if self.applied.get(name) != digest:
                self._apply(name, digest)

    def _apply(self, name: str, digest: str | None) -> None:
        path = os.path.join(self.directory, name + ".yaml")
        if digest is None:
            self.applied.pop(name, None)
            self.errors.pop(name, None)
            if name in self.manager.meters and name not in self.main_meters:
                log.info("conf.d: {name}.yaml deleted: stopping meter {name}", name=name)
                self.manager.remove(name).addErrback(
                    lambda f: log.failure("conf.d: stopping meter {name} failed", f, name=name))
            return
        try:
            if name in self.main_meters:
                raise ConfigError(path, "(file name)", f"meter {name!r} is defined in the main "
                                  "config file already; define each meter once")
            mc = load_meter_file(path)
        except ConfigError as exc:
            # Keep the running meter (if any) and do not retry until it changes.
            self.applied[name] = digest
            self.errors[name] = str(exc)
            log.error("conf.d: {error}; meter {name} keeps running as it was", error=str(exc), name=name)
            return
        self.applied[name] = digest
        self.errors.pop(name, None)
        if name in self.manager.meters:
            log.info("conf.d: {name}.yaml changed: restarting its source", name=name)
        else:
            log.info("conf.d: {name}.yaml created: starting meter {name}", name=name)
        self.manager.apply(mc).addErrback(
            lambda f: log.failure("conf.d: applying {name}.yaml failed", f, name=name))
