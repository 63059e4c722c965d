"""The real twistd process: plugin discovery, start, SIGTERM, bad config.

These run the *installed* package (as a user or systemd would), from a
temporary working directory so nothing in the checkout can shadow it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import deferLater
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meteremu.tap import Options
from tests.support import HTTPClient
from tests.support.twistd import RUN, TWISTD, Twistd, spawn, write_config


class TwistdTests(TestCase):
    timeout = 60

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())

    @inlineCallbacks
    def test_plugin_listed_from_installed_package(self):
        os.makedirs(self.dir)
        proto = spawn(self, ["--help"], self.dir)
        yield proto.ended
        self.assertIn(b"meteremu", proto.output)
        self.assertRegex(proto.output.decode(), r"meteremu\s+Energy-meter emulator")

    @inlineCallbacks
    def test_serves_and_saves_final_state_on_sigterm(self):
        config = write_config(self.dir)
        proto = spawn(self, [*RUN, "--config", config], self.dir)
        port = yield proto.serving()
        http = HTTPClient(self)
        # Wait until energy was counted (one way or the other: the simulated house imports
        # or exports by the time of day of the run), or the stored zeros prove nothing.
        for _ in range(100):
            response, body = yield http.get(f"http://127.0.0.1:{port}/rpc/EMData.GetStatus?id=0")
            self.assertEqual(response.code, 200)
            served = json.loads(body)
            if served["total_act"] + served["total_act_ret"] > 0:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertGreater(served["total_act"] + served["total_act_ret"], 0)
        os.kill(proto.transport.pid, signal.SIGTERM)
        reason = yield proto.ended
        # twistd re-raises SIGTERM after a clean shutdown.
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.signal, signal.SIGTERM)
        self.assertIn(b"Server Shut Down", proto.output)
        self.assertNotIn(b"Traceback", proto.output + proto.stderr)
        # persist_interval is 1 h: what is stored was written by the final save on stop.
        conn = sqlite3.connect(os.path.join(self.dir, "state.db"))
        rows = dict(conn.execute("SELECT key, value FROM kv"))
        conn.close()
        energy = json.loads(rows["meter:grid:energy"])
        self.assertGreaterEqual(sum(i for i, _ in energy["phases"]), served["total_act"] - 0.01)
        self.assertGreaterEqual(sum(e for _, e in energy["phases"]), served["total_act_ret"] - 0.01)
        self.assertRegex(json.loads(rows["device:0:mac"]), r"^C8F09E[0-9A-F]{6}$")

    @inlineCallbacks
    def test_runs_on_the_meteremu_reactor_by_default_and_on_asyncio_when_named(self):
        config = write_config(self.dir)
        ours, asyncio = b"meteremu.reactor.MeteremuReactor", b"twisted.internet.asyncioreactor.AsyncioSelectorReactor"
        for choice, expected in (([], ours), (["--reactor=meteremu"], ours), (["--reactor=asyncio"], asyncio)):
            proto = spawn(self, [*choice, *RUN, "--config", config], self.dir)
            port = yield proto.serving()
            response, _ = yield HTTPClient(self).get(f"http://127.0.0.1:{port}/rpc/Shelly.GetStatus")
            self.assertEqual(response.code, 200, choice)
            self.assertIn(b"reactor class: " + expected, proto.output, choice)
            proto.transport.signalProcess("TERM")
            yield proto.ended

    @inlineCallbacks
    def test_a_reactor_without_asyncio_is_refused_in_one_line(self):
        config = write_config(self.dir)
        proto = spawn(self, ["--reactor=select", *RUN, "--config", config], self.dir)
        reason = yield proto.ended
        self.assertEqual(getattr(reason, "exitCode", None), 2)
        self.assertIn(b"meteremu: this part of meteremu needs the asyncio reactor", proto.stderr)
        self.assertNotIn(b"Traceback", proto.output + proto.stderr)

    @inlineCallbacks
    def test_bad_config_is_one_line_and_exit_2(self):
        os.makedirs(self.dir)
        path = os.path.join(self.dir, "bad.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("server:\n  http_prot: 80\n")
        proto = spawn(self, [*RUN, "--config", path], self.dir)
        reason = yield proto.ended
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.exitCode, 2)
        lines = (proto.output + proto.stderr).decode().strip().splitlines()
        self.assertEqual(lines, [f"meteremu: {path}: server.http_prot: unknown key; did you mean 'http_port'?"])

    @inlineCallbacks
    def test_busy_port_stops_with_a_clear_message(self):
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        port = blocker.getsockname()[1]
        config = write_config(self.dir, port=port)
        proto = spawn(self, [*RUN, "--config", config], self.dir)
        reason = yield proto.ended
        self.assertNotIsInstance(reason, ProcessDone)
        text = (proto.output + proto.stderr).decode()
        self.assertIn(f"meteremu: cannot listen for HTTP on 127.0.0.1:{port}", text)
        self.assertNotIn("Traceback", text)


def free_privileged_port(kind: int, preferred: int) -> int:
    """``preferred`` if it is free on 127.0.0.1, else another free port below 1024 (root only)."""
    for port in (preferred, *range(900, 1024)):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 1024")


NOBODY = 65534


def unreachable_by_others(*paths: str) -> str | None:
    """The first directory on the way to ``paths`` that other users cannot enter, if any.

    After ``--uid`` the service imports as that user: a checkout (and its venv)
    under a 0700 directory, as ``mktemp -d`` makes, cannot be read then.
    """
    import stat

    for path in paths:
        current = os.path.dirname(os.path.abspath(path))
        while True:
            if not os.stat(current).st_mode & stat.S_IXOTH:
                return current
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
    return None


def privileged_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root (twistd --uid); CI runs as root"
    import meteremu

    # The venv's own files (not the interpreter it links to, whose stdlib twistd preloads) and the code.
    closed = unreachable_by_others(os.path.join(sys.prefix, "pyvenv.cfg"), meteremu.__file__, __file__)
    if closed is not None:
        return (f"{closed} is closed to other users, so the service cannot import its code after "
                "dropping to nobody; clone into a directory others can enter to run this test")
    return None


class PrivilegedPortTests(TestCase):
    """``twistd --uid``: every port is bound as root, then the service runs as the user."""

    timeout = 60
    skip = privileged_skip()

    @inlineCallbacks
    def test_ports_below_1024_with_uid(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        os.chmod(os.path.dirname(directory), 0o755)  # trial's mkdtemp is owner-only
        os.chown(directory, NOBODY, NOBODY)  # the state directory belongs to the service user
        http = free_privileged_port(socket.SOCK_STREAM, 80)
        modbus = free_privileged_port(socket.SOCK_STREAM, 502)
        udp = free_privileged_port(socket.SOCK_DGRAM, 1010)
        config = write_config(directory, port=http, extra=f"""devices:
  - {{type: shelly_pro_3em, modbus_port: {modbus}, modbus_bind: 127.0.0.1, udp_ports: [{udp}]}}
""")
        args = ["-n", "--pidfile=", "--logfile=-", f"--uid={NOBODY}", f"--gid={NOBODY}",
                "meteremu", "--config", config]
        proto = Twistd()
        # twistd, started from a Python that first loads the idna codec: this
        # machine's Python lives under /root (0700), so once twistd has dropped
        # to "nobody" nothing more can be imported, and the HTTP router needs
        # that codec on its first request. (A Python under /usr needs nothing.)
        code = ("import encodings.idna, sys; from twisted.scripts.twistd import run; "
                "sys.argv = ['twistd', *sys.argv[1:]]; run()")
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}
        reactor.spawnProcess(proto, sys.executable, [sys.executable, "-c", code, *args],
                             env={**env, "PYTHONUNBUFFERED": "1"}, path=directory)
        self.addCleanup(lambda: None if proto.ended.called else (proto.transport.signalProcess("KILL"),
                                                                 proto.ended)[1])
        try:
            port = yield proto.serving()
        except Exception:
            self.fail("twistd --uid did not serve: " + (proto.output + proto.stderr).decode()[-2000:])
        self.assertEqual(port, http)
        with open(f"/proc/{proto.transport.pid}/status", encoding="ascii") as handle:
            uids = [line.split()[1:] for line in handle if line.startswith("Uid:")][0]
        self.assertEqual(set(uids), {str(NOBODY)}, "the service still runs as root")
        response, body = yield HTTPClient(self).get(f"http://127.0.0.1:{http}/shelly")
        self.assertEqual(response.code, 200)
        # Modbus TCP on the privileged port: FC 0x04, total active power (1013, 2 registers).
        with socket.create_connection(("127.0.0.1", modbus), timeout=5) as conn:
            conn.sendall(bytes.fromhex("000100000006010403f50002"))
            answer = conn.recv(64)
        self.assertEqual(answer[:2], b"\x00\x01")
        self.assertEqual(answer[7], 0x04, answer.hex())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', ("127.0.0.1", udp))
            reply = json.loads(client.recv(4096))
        self.assertIn("total_act_power", reply["result"])
        proto.transport.signalProcess("TERM")
        yield proto.ended
        # The store, created while still root, was written by the service user.
        self.assertEqual(os.stat(os.path.join(directory, "state.db")).st_uid, NOBODY)
        with sqlite3.connect(os.path.join(directory, "state.db")) as db:
            keys = {row[0] for row in db.execute("SELECT key FROM kv")}
        self.assertIn("meter:grid:energy", keys)
        self.assertNotIn("Traceback", (proto.output + proto.stderr).decode())


def libfaketime() -> str | None:
    """Debian's libfaketime (package faketime), which steps a process's wall clock from a file."""
    import glob

    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


class ClockStepTests(TestCase):
    """The host's wall clock steps back an hour (NTP at boot, an operator): nothing freezes."""

    timeout = 60
    skip = None if libfaketime() else "needs libfaketime (Debian package faketime; scripts/debian-packages)"

    @inlineCallbacks
    def test_a_backward_step_changes_only_the_timestamps(self):
        from twisted.internet.task import deferLater

        directory = os.path.abspath(self.mktemp())
        config = write_config(directory)
        offset = os.path.join(directory, "offset")
        with open(offset, "w", encoding="ascii") as handle:
            handle.write("+0")
        proto = Twistd()
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
        env.update(PYTHONUNBUFFERED="1", LD_PRELOAD=libfaketime(), FAKETIME_TIMESTAMP_FILE=offset,
                   FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
        transport = reactor.spawnProcess(proto, TWISTD, [TWISTD, *RUN, "--config", config], env=env, path=directory)
        self.addCleanup(lambda: None if proto.ended.called else (transport.signalProcess("KILL"), proto.ended)[1])
        port = yield proto.serving()
        http = HTTPClient(self)
        base = f"http://127.0.0.1:{port}"
        _, body = yield http.get(base + "/rpc/Sys.GetStatus")
        before = json.loads(body)
        _, body = yield http.get(base + "/healthz")
        fetches = json.loads(body)["meters"]["grid"]["fetches"]
        with open(offset, "w", encoding="ascii") as handle:
            handle.write("-3600")  # the wall clock goes back one hour
        yield deferLater(reactor, 6.0, lambda: None)  # longer than the meter's stale_after (5 s)
        response, body = yield http.get(base + "/healthz")
        health = json.loads(body)
        self.assertEqual(response.code, 200, health)
        self.assertLess(health["meters"]["grid"]["age_s"], 2.0, "the source stopped after the step")
        # The simulator reads every 100 ms: its timer kept running through the step.
        self.assertGreater(health["meters"]["grid"]["fetches"], fetches + 20, "timers froze after the step")
        _, body = yield http.get(base + "/rpc/Sys.GetStatus")
        after = json.loads(body)
        self.assertGreaterEqual(after["uptime"], before["uptime"] + 5)  # uptime runs on
        # The shown time follows (trial's assertAlmostEqual takes delta but ignores it).
        self.assertApproximates(after["unixtime"], before["unixtime"] - 3600 + 6, 3)
        proto.transport.signalProcess("TERM")
        yield proto.ended


class StoreFailureTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_an_unusable_store_stops_start_up_and_is_left_alone(self):
        """Not corruption (here: a directory where the file should be): one line, status 1."""
        directory = os.path.abspath(self.mktemp())
        config = write_config(directory)
        os.makedirs(os.path.join(directory, "state.db"))
        proto = spawn(self, [*RUN, "--config", config], directory)
        reason = yield proto.ended
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.exitCode, 1)
        text = (proto.output + proto.stderr).decode()
        self.assertIn(f"meteremu: store {os.path.join(directory, 'state.db')}: cannot be used now", text)
        self.assertNotIn("Traceback", text)
        self.assertEqual([n for n in os.listdir(directory) if ".corrupt-" in n], [])


class AsyncStartFailureTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_busy_modbus_port_stops_the_process(self):
        # Modbus may start asynchronously; its failure must still end the
        # process with one clear line and a non-zero status (design.md §3).
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        port = blocker.getsockname()[1]
        directory = os.path.abspath(self.mktemp())
        config = write_config(directory, extra=f"""devices:
  - {{type: shelly_pro_3em, modbus_port: {port}, modbus_bind: 127.0.0.1}}
""")
        proto = spawn(self, [*RUN, "--config", config], directory)
        reason = yield proto.ended
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.exitCode, 1)
        text = (proto.output + proto.stderr).decode()
        self.assertIn(f"meteremu: Modbus TCP: cannot listen on 127.0.0.1:{port}", text)
        self.assertNotIn("Traceback", text)


class OptionsTests(SynchronousTestCase):
    def test_embedded_default_without_config(self):
        options = Options()
        options.parseOptions([])
        config = options["settings"]
        self.assertEqual(config.server.http_port, 8080)
        self.assertEqual(list(config.meters), ["grid"])
        self.assertEqual(config.meters["grid"].source.type, "simulator")

    def test_unknown_option_is_a_usage_error(self):
        self.assertRaises(UsageError, Options().parseOptions, ["--bogus"])
