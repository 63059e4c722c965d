"""The real clock: the same scenario on the reactor, over real loopback sockets.

The plants and their integration are :class:`~meteremu.lab.loop.Loop`, as on
the simulated clock; only the driver differs. The household's meter
publishes its samples to an MQTT broker (paho in its own thread, the way an
independent publisher would); each battery is a real client on its own
loopback address (``127.0.0.11``, ``.12``, …: the emulator keys clients by
IP) polling ``EM.GetStatus`` over UDP or ``GET /rpc/EM.GetStatus?id=0``
over HTTP at its own cadence.

Against meteremu (no ``--target``): a mosquitto is started on a free port
and a whole meteremu (``meteremu.app.build``) with the lab's configuration
(:func:`~meteremu.lab.meterpath.meteremu_config`), on free UDP and HTTP ports.
Against any other emulator: ``--target udp://HOST:PORT`` and/or
``--target http://HOST:PORT`` say where the batteries poll, ``--feed
mqtt://HOST:PORT/TOPIC`` where the household's grid is published (the
payload is ``{"a": W, "b": W, "c": W}``; point the emulator's MQTT input
at it). Every target is probed first (``Shelly.GetDeviceInfo`` over UDP,
``GET /shelly``): an emulator that does not answer is one clear error.

CT002 (``--scaling ct002`` or ``ct002_relay``; ``--target ct://HOST:PORT``
for another emulator's CT002): every battery sends CT002 request frames
(:mod:`meteremu.lab.ctclient`) from its own loopback address and reads the
answer addressed to its MAC. A CT target is not probed: a CT whose meter
has no reading yet stays silent, as a real one does.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater

from meteremu.lab import ctclient
from meteremu.lab.battery import Battery
from meteremu.lab.household import build as build_household
from meteremu.lab.loop import Loop
from meteremu.lab.meterpath import (
    TOPIC,
    DeviceSetup,
    meteremu_config,
    payload,
    served_total,
    udp_request,
)
from meteremu.lab.scenario import Scenario

PROBE_TIMEOUT = 3.0
HTTP_TIMEOUT = 1.0


class RealtimeError(Exception):
    """Bad input or an unreachable emulator: the CLI prints it as one line, exit 2."""


@dataclass(frozen=True)
class Target:
    scheme: str  # udp | http | ct
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_target(text: str) -> Target:
    """``udp://HOST:PORT``, ``http://HOST:PORT`` or ``ct://HOST:PORT`` (a CT002 over UDP)."""
    parts = urlsplit(text)
    if parts.scheme not in ("udp", "http", "ct") or not parts.hostname:
        raise RealtimeError(f"bad --target {text!r}: expected udp://HOST:PORT, http://HOST:PORT or ct://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 80 if parts.scheme == "http" else None
    if port is None or not 0 < port < 65536:
        raise RealtimeError(f"bad --target {text!r}: expected a port 1-65535")
    return Target(parts.scheme, parts.hostname, port)


def parse_feed(text: str) -> tuple[str, int, str]:
    """``mqtt://HOST:PORT/TOPIC`` (topic default: the lab's)."""
    parts = urlsplit(text)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise RealtimeError(f"bad --feed {text!r}: expected mqtt://HOST:PORT/TOPIC")
    try:
        port = parts.port or 1883
    except ValueError:
        raise RealtimeError(f"bad --feed {text!r}: expected a port 1-65535") from None
    return parts.hostname, port, parts.path.lstrip("/") or TOPIC


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- a broker of our own -----------------------------------------------------------------


class Broker:
    """A mosquitto on 127.0.0.1 at a free port, for runs against meteremu."""

    def __init__(self) -> None:
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.access(p, os.X_OK)), None)
        if binary is None:
            raise RealtimeError("--realtime against meteremu needs mosquitto (apt-get install mosquitto), "
                                "or give --target and --feed of a running emulator")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="meteremu-lab-")
        conf = os.path.join(self.dir, "mosquitto.conf")
        with open(conf, "w", encoding="utf-8") as handle:
            handle.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process = subprocess.Popen([binary, "-c", conf], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @inlineCallbacks
    def ready(self, reactor: Any) -> Generator[Deferred[Any], Any, None]:
        deadline = time.monotonic() + 10.0
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RealtimeError("mosquitto did not start") from None
            yield deferLater(reactor, 0.05, lambda: None)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Publisher:
    """paho on its own thread: the household's meter publishing its samples."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.host, self.port, self.topic = host, port, topic
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"meteremu-lab-{os.getpid()}")
        self.connected = False
        self.client.on_connect = self._on_connect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected = not reason.is_failure

    @inlineCallbacks
    def start(self, reactor: Any) -> Generator[Deferred[Any], Any, None]:
        try:
            self.client.connect_async(self.host, self.port)
        except (OSError, ValueError) as exc:
            raise RealtimeError(f"cannot reach the feed's broker {self.host}:{self.port}: {exc}") from None
        self.client.loop_start()
        deadline = reactor.seconds() + PROBE_TIMEOUT
        while not self.connected:
            if reactor.seconds() > deadline:
                self.stop()
                raise RealtimeError(f"no MQTT broker answers at {self.host}:{self.port} (--feed)")
            yield deferLater(reactor, 0.05, lambda: None)

    def publish(self, data: bytes) -> None:
        self.client.publish(self.topic, data, qos=0)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the batteries' clients ----------------------------------------------------------------


class UdpClient(DatagramProtocol):
    """One battery's UDP socket; answers go to whoever waits for that request id."""

    def __init__(self) -> None:
        self.waiting: dict[int, Callable[[bytes], None]] = {}

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            frame_id = json.loads(data).get("id")
        except (ValueError, AttributeError):
            return
        callback = self.waiting.pop(frame_id, None) if isinstance(frame_id, int) else None
        if callback is not None:
            callback(data)


class CtClient(DatagramProtocol):
    """One battery's CT002 socket: the next answer goes to whoever waits (one request at a time)."""

    def __init__(self) -> None:
        self.waiting: Callable[[bytes], None] | None = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        callback, self.waiting = self.waiting, None
        if callback is not None:
            callback(data)


class RealtimeRun:
    """One scenario, one seed, on the reactor (see the module docstring)."""

    def __init__(self, scenario: Scenario, seed: int, setup: DeviceSetup, reactor: Any,
                 targets: tuple[Target, ...] = (), feed: tuple[str, int, str] | None = None) -> None:
        self.scenario, self.seed, self.setup, self.reactor = scenario, seed, setup, reactor
        self.targets, self.feed = targets, feed
        if targets and feed is None:
            raise RealtimeError("--target needs --feed mqtt://HOST:PORT/TOPIC: where the emulator reads the grid")
        self.udp_targets = [t for t in targets if t.scheme == "udp"]
        self.http_targets = [t for t in targets if t.scheme == "http"]
        self.ct_targets = [t for t in targets if t.scheme == "ct"]
        self.loop = Loop(scenario, seed, build_household(scenario.household, scenario.duration, seed))
        self._cleanups: list[Callable[[], Any]] = []
        self._ports: dict[int, Any] = {}
        self._clients: dict[int, Any] = {}  # UdpClient or CtClient
        self._agents: dict[int, Any] = {}
        self._ids = 1
        self._start = 0.0
        self._calls: set[Any] = set()  # pending timers, cancelled when the run ends

    def now(self) -> float:
        return float(self.reactor.seconds()) - self._start

    # -- set-up ----------------------------------------------------------------------------
    @inlineCallbacks
    def _start_meteremu(self) -> Generator[Deferred[Any], Any, None]:
        from meteremu.app import build

        broker = Broker()
        self._cleanups.append(broker.stop)
        yield broker.ready(self.reactor)
        udp = (free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM))
        ct_port = free_port(socket.SOCK_DGRAM)
        state = tempfile.mkdtemp(prefix="meteremu-lab-state-")
        self._cleanups.append(lambda: shutil.rmtree(state, ignore_errors=True))
        config = meteremu_config(self.setup, broker.port, udp, http_port=free_port(), state_dir=state,
                                 ct_port=ct_port)
        app = build(config, self.reactor)
        app.service.startService()
        self._cleanups.append(app.service.stopService)
        yield app.ready()
        if self.setup.face == "ct002":
            self.ct_targets = [Target("ct", "127.0.0.1", ct_port)]
        else:
            self.udp_targets = [Target("udp", "127.0.0.1", port) for port in udp]
            self.http_targets = [Target("http", "127.0.0.1", app.http_port())]
        self.feed = ("127.0.0.1", broker.port, TOPIC)
        self.app = app

    def _target_for(self, battery: Battery) -> Target:
        if self.ct_targets:  # a CT serves every battery
            return self.ct_targets[0]
        if self.setup.face == "ct002":
            raise RealtimeError(f"scenario {self.scenario.name} on a CT002: give --target ct://HOST:PORT")
        if battery.spec.transport == "http":
            if not self.http_targets:
                raise RealtimeError(f"scenario {self.scenario.name} has HTTP batteries: "
                                    "give --target http://HOST:PORT")
            return self.http_targets[0]
        if not self.udp_targets:
            raise RealtimeError(f"scenario {self.scenario.name} has UDP batteries: give --target udp://HOST:PORT")
        second = battery.spec.transport == "udp2220" and len(self.udp_targets) > 1
        return self.udp_targets[1 if second else 0]

    def _open(self, battery: Battery) -> None:
        from twisted.web.client import Agent, HTTPConnectionPool

        if self._target_for(battery).scheme == "http":
            pool = HTTPConnectionPool(self.reactor, persistent=True)
            self._cleanups.append(pool.closeCachedConnections)
            self._agents[battery.index] = Agent(self.reactor, connectTimeout=HTTP_TIMEOUT,
                                                bindAddress=(battery.ip, 0), pool=pool)
        else:
            client = CtClient() if self._target_for(battery).scheme == "ct" else UdpClient()
            try:
                port = self.reactor.listenUDP(0, client, interface=battery.ip)
            except OSError as exc:
                raise RealtimeError(f"cannot bind a battery's UDP socket on {battery.ip}: {exc}") from None
            self._clients[battery.index] = client
            self._ports[battery.index] = port
            self._cleanups.append(port.stopListening)

    # -- one poll ----------------------------------------------------------------------------
    def _ask(self, battery: Battery, target: Target, method: str = "EM.GetStatus",
             timeout: float = HTTP_TIMEOUT) -> Deferred[bytes | None]:
        """One request; fires with the answer's bytes, or None (timeout, error status)."""
        if target.scheme == "ct":
            return self._ask_ct(battery, target, timeout)
        if target.scheme == "udp":
            client, port = self._clients[battery.index], self._ports[battery.index]
            frame_id = self._ids
            self._ids += 1
            request = (udp_request(frame_id) if method == "EM.GetStatus"
                       else b'{"id":%d,"method":"%s"}' % (frame_id, method.encode()))
            d, answered = self._await_answer(timeout, lambda: client.waiting.pop(frame_id, None))
            client.waiting[frame_id] = answered
            port.write(request, (target.host, target.port))
            return d
        agent = self._agents[battery.index]
        path = "/rpc/EM.GetStatus?id=0" if method == "EM.GetStatus" else "/shelly"
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers

        request = agent.request(b"GET", f"http://{target.host}:{target.port}{path}".encode(),
                                Headers({b"user-agent": [b"lab-battery"]}))
        request.addTimeout(timeout, self.reactor)

        def got(response: Any) -> Deferred[Any]:
            body: Deferred[Any] = readBody(response)
            if response.code != 200:
                body.addBoth(lambda _: None)
            return body
        request.addCallback(got)
        request.addErrback(lambda _failure: None)
        return request

    def _ask_ct(self, battery: Battery, target: Target, timeout: float) -> Deferred[bytes | None]:
        """One CT002 request; fires with the answer's bytes, or None after ``timeout``."""
        client, port = self._clients[battery.index], self._ports[battery.index]

        def forget() -> None:
            client.waiting = None

        d, answered = self._await_answer(timeout, forget)
        client.waiting = answered
        port.write(ctclient.request(battery), (target.host, target.port))
        return d

    def _await_answer(self, timeout: float, forget: Callable[[], object]
                      ) -> tuple[Deferred[bytes | None], Callable[[bytes], None]]:
        """A Deferred for one datagram answer and the callback that delivers it; after
        ``timeout`` it fires with None and ``forget`` drops the pending callback."""
        d: Deferred[bytes | None] = Deferred()

        def answered(data: bytes) -> None:
            if timer.active():
                timer.cancel()
            self._calls.discard(timer)
            if not d.called:
                d.callback(data)

        def expire() -> None:
            self._calls.discard(timer)
            forget()
            if not d.called:
                d.callback(None)

        timer = self.reactor.callLater(timeout, expire)
        self._calls.add(timer)
        return d, answered

    @inlineCallbacks
    def _probe(self) -> Generator[Deferred[Any], Any, None]:
        for battery in self.loop.batteries:
            target = self._target_for(battery)
            if target.scheme == "ct":
                continue
            method = "Shelly.GetDeviceInfo" if target.scheme == "udp" else "shelly"
            answer = yield self._ask(battery, target, method, timeout=PROBE_TIMEOUT)
            if answer is None:
                raise RealtimeError(f"no answer from {target} (is the emulator running there?)")

    # -- the run -------------------------------------------------------------------------------
    @inlineCallbacks
    def run(self) -> Generator[Deferred[Any], Any, Loop]:
        try:
            if not self.targets:
                yield self._start_meteremu()
            for battery in self.loop.batteries:
                self._target_for(battery)
                self._open(battery)
            assert self.feed is not None
            publisher = Publisher(*self.feed)
            yield publisher.start(self.reactor)
            self._cleanups.append(publisher.stop)
            yield self._probe()
            yield self._loop(publisher)
            return self.loop
        finally:
            for call in list(self._calls):
                if call.active():
                    call.cancel()
            self._calls.clear()
            for cleanup in reversed(self._cleanups):
                try:
                    result = cleanup()
                    if isinstance(result, Deferred):
                        yield result
                except Exception:  # a clean-up must not hide the run's own outcome
                    pass

    def _at(self, t: float, action: Callable[[], None]) -> None:
        def fire() -> None:
            self._calls.discard(call)
            action()
        call = self.reactor.callLater(max(0.0, t - self.now()), fire)
        self._calls.add(call)

    def _loop(self, publisher: Publisher) -> Deferred[None]:
        loop, duration = self.loop, self.scenario.duration
        done: Deferred[None] = Deferred()
        self._start = float(self.reactor.seconds())

        def sampler(sampled: float) -> Callable[[], None]:
            def sample() -> None:
                loop.advance(self.now())
                phases = loop.grid_phases()
                data = payload(phases)

                def deliver() -> None:
                    loop.last_published = sum(phases)
                    publisher.publish(data)
                self._at(loop.delivery(sampled), deliver)
            return sample

        for sampled in loop.sample_times():
            self._at(sampled, sampler(sampled))
        for battery in loop.batteries:
            self._at(loop.first_poll(battery.index), self._poller(battery))

        def finish() -> None:
            loop.advance(duration)
            done.callback(None)
        self._at(duration, finish)
        return done

    def _poller(self, battery: Battery) -> Callable[[], None]:
        target = self._target_for(battery)
        envelope = target.scheme == "udp"
        ct = target.scheme == "ct"

        def poll() -> None:
            now = self.now()
            self.loop.advance(now)
            self._at(self.loop.next_poll(battery, now), poll)
            if self.loop.lost():
                battery.observe(now, None)
                return
            timeout = min(HTTP_TIMEOUT, max(0.2, (battery.spec.cadence or 1.0) * 0.9))

            def answered(body: bytes | None) -> None:
                at = self.now()
                if at > self.scenario.duration:
                    return
                self.loop.advance(at)
                if ct:
                    answer = ctclient.read(battery, body)
                    if answer is None or self.loop.lost():
                        battery.observe(at, None)
                    else:
                        battery.observe(at, answer.value, answer.nb, answer.info_idx, answer.inspecting)
                    return
                value = served_total(body, envelope) if body is not None else None
                if value is not None and self.loop.lost():
                    value = None
                battery.observe(at, value)
            self._ask(battery, target, timeout=timeout).addCallback(answered)
        return poll


def run_realtime(scenario: Scenario, seed: int, setup: DeviceSetup, reactor: Any,
                 targets: tuple[Target, ...] = (), feed: tuple[str, int, str] | None = None) -> Deferred[Loop]:
    """Run ``scenario`` in real time; fires with the finished :class:`Loop`."""
    runner = RealtimeRun(scenario, seed, setup, reactor, targets, feed)
    result: Deferred[Loop] = runner.run()
    return result
