"""A real mosquitto per test, and a real MQTT subscriber to watch it.

``Mosquitto(case, …)`` writes a config into the test's temp dir (a listener on
127.0.0.1 at a free port, persistence off so a restart forgets retained
messages), runs Debian's ``mosquitto`` and stops it at cleanup. Variants: ``users={name: password}`` (anonymous off, a password
file made with ``mosquitto_passwd``) and ``tls=make_certificates(dir)``
(optionally ``require_certificate``). Tests skip only when the binary is
missing: ``mosquitto_skip()``.

``Subscriber`` is paho in its own network thread (``loop_start``), the other
way of driving paho than the code under test; messages are handed to the
reactor thread through a queue and awaited with ``wait()`` (a Deferred with a
timeout, never a sleep). It speaks MQTT 5 and subscribes with
"retain as published", so the retain flag of live messages can be checked.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import queue
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

START_TIMEOUT = 10.0
WAIT_TIMEOUT = 10.0


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/bin", "/usr/local/sbin"):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


MOSQUITTO = _find("mosquitto")
MOSQUITTO_PASSWD = _find("mosquitto_passwd")


def mosquitto_skip() -> str | None:
    if MOSQUITTO is None:
        return "mosquitto is not installed (Debian: apt-get install mosquitto)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- certificates -----------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA that signed nothing here: verification against it fails


def make_certificates(directory: str) -> TLSFiles:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: Any, path: str) -> None:
        with open(path, "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        os.chmod(path, 0o600)

    def write_cert(cert: Any, path: str) -> None:
        with open(path, "wb") as handle:
            handle.write(cert.public_bytes(serialization.Encoding.PEM))

    def ca(cn: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    def leaf(cn: str, ca_key: Any, ca_cert: Any, server: bool) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = ca("meteremu test CA")
    _, other_cert = ca("some other CA")
    server_key, server_cert = leaf("broker", ca_key, ca_cert, server=True)
    client_key, client_cert = leaf("meteremu client", ca_key, ca_cert, server=False)
    files = TLSFiles(*(os.path.join(directory, n) for n in (
        "ca.pem", "server.pem", "server.key", "client.pem", "client.key", "other-ca.pem")))
    write_cert(ca_cert, files.ca)
    write_cert(other_cert, files.other_ca)
    write_cert(server_cert, files.server_cert)
    write_key(server_key, files.server_key)
    write_cert(client_cert, files.client_cert)
    write_key(client_key, files.client_key)
    return files


# -- the broker -------------------------------------------------------------------------


class MosquittoError(Exception):
    pass


class Mosquitto:
    """One mosquitto on 127.0.0.1:``port``; ``start()``/``stop()``/``kill()`` may repeat.

    The process is a plain ``subprocess.Popen`` (not ``spawnProcess``): no SIGCHLD
    handling is involved, so the fixture also works in ``trial -j`` workers. Its
    log goes to a file; ``start()`` polls it (every 20 ms, bounded) for "running".
    """

    def __init__(self, case: TestCase, users: dict[str, str] | None = None, tls: TLSFiles | None = None,
                 require_certificate: bool = False, port: int | None = None) -> None:
        self.dir = os.path.abspath(case.mktemp())
        os.makedirs(self.dir)
        self.port = port or free_port()
        self.users, self.tls, self.require_certificate = users, tls, require_certificate
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(self.dir, "mosquitto.log")
        self.starts = 0
        case.addCleanup(self.stop)

    def _config(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "persistence false",
            "log_dest stderr",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        if self.users:
            if MOSQUITTO_PASSWD is None:
                raise MosquittoError("mosquitto_passwd is not installed")
            path = os.path.join(self.dir, "passwd")
            for i, (user, password) in enumerate(self.users.items()):
                flags = ["-b", "-c"] if i == 0 else ["-b"]
                subprocess.run([MOSQUITTO_PASSWD, *flags, path, user, password], check=True,
                               capture_output=True)
            os.chmod(path, 0o600)
            lines.append(f"password_file {path}")
        if self.tls:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.server_cert}",
                      f"keyfile {self.tls.server_key}",
                      f"require_certificate {'true' if self.require_certificate else 'false'}"]
        path = os.path.join(self.dir, "mosquitto.conf")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return path

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def start(self) -> Deferred[None]:
        """Run mosquitto; fires once it says it is running (fails if it exits or takes 10 s)."""
        if MOSQUITTO is None:
            raise MosquittoError("mosquitto is not installed")
        if self.running:
            return succeed(None)
        self.starts += 1
        before = self.log.count(" running")  # the log file is shared by restarts
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", self._config()], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)
        process = self.process
        d: Deferred[None] = Deferred()

        def check() -> None:
            text = self.log
            if text.count(" running") > before:
                loop.stop()
                d.callback(None)
            elif process.poll() is not None:
                loop.stop()
                d.errback(MosquittoError(f"mosquitto exited with {process.returncode}:\n{text}"))

        loop = LoopingCall(check)
        loop.start(0.02, now=True)

        def timed_out(failure: Failure) -> Failure:
            if loop.running:
                loop.stop()
            return failure

        d.addTimeout(START_TIMEOUT, reactor)
        return d.addErrback(timed_out)

    def _end(self, kill: bool) -> Deferred[None]:
        process = self.process
        if process is None or process.poll() is not None:
            return succeed(None)
        (process.kill if kill else process.terminate)()
        try:
            process.wait(timeout=5)  # mosquitto exits within milliseconds of SIGTERM
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """SIGTERM and wait for the exit (SIGKILL after 5 s)."""
        return self._end(kill=False)

    def kill(self) -> Deferred[None]:
        return self._end(kill=True)


# -- the subscriber ---------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    @property
    def text(self) -> str:
        return self.payload.decode()


class Subscriber:
    """A paho client on its own thread, subscribed to ``topics`` with retain-as-published.

    The paho thread only puts events on a queue; a 20 ms ``LoopingCall`` on the
    reactor drains it (no ``callFromThread`` wake-ups, which upset ``trial -j``
    workers under the asyncio reactor).
    """

    def __init__(self, case: TestCase, broker: Mosquitto, topics: tuple[str, ...] = ("#",),
                 username: str | None = None, password: str | None = None,
                 client_id: str = "test-subscriber") -> None:
        import paho.mqtt.client as mqtt

        self.broker = broker
        self.topics = topics
        self.messages: list[Received] = []
        self._waiters: list[tuple[Callable[[Received], bool], int, Deferred[Received]]] = []
        self._connected: Deferred[None] = Deferred()
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._pump = LoopingCall(self._drain)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            client.username_pw_set(username, password)
        if broker.tls is not None:
            client.tls_set(ca_certs=broker.tls.ca, certfile=broker.tls.client_cert,
                           keyfile=broker.tls.client_key)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client
        self._mqtt = mqtt
        case.addCleanup(self.close)

    # paho's thread
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._events.put(("failed", str(reason)))
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions

        options = SubscribeOptions(qos=1, retainAsPublished=True)
        client.subscribe([(t, options) for t in self.topics])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self._events.put(("subscribed", None))

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._events.put(("message", Received(message.topic, bytes(message.payload), bool(message.retain),
                                              message.qos)))

    # the reactor's thread
    def _drain(self) -> None:
        while True:
            try:
                kind, value = self._events.get_nowait()
            except queue.Empty:
                return
            if kind == "message":
                self._deliver(value)
            elif not self._connected.called:
                if kind == "subscribed":
                    self._connected.callback(None)
                else:
                    self._connected.errback(MosquittoError(f"subscriber could not connect: {value}"))

    def _deliver(self, message: Received) -> None:
        index = len(self.messages)
        self.messages.append(message)
        for waiter in list(self._waiters):
            match, after, d = waiter
            if index >= after and match(message):
                self._waiters.remove(waiter)
                d.callback(message)

    def connect(self) -> Deferred[None]:
        """Connect, subscribe, and fire once the subscription is confirmed."""
        self._pump.start(0.02, now=False)
        self.client.connect_async("127.0.0.1", self.broker.port)
        self.client.loop_start()
        d = self._connected
        d.addTimeout(WAIT_TIMEOUT, reactor)
        return d

    def mark(self) -> int:
        """A position in ``messages``: ``wait(after=mark)`` ignores what came before."""
        return len(self.messages)

    def matching(self, topic: str, after: int = 0) -> list[Received]:
        return [m for m in self.messages[after:] if self._mqtt.topic_matches_sub(topic, m.topic)]

    def wait(self, topic: str, payload: bytes | str | None = None, after: int = 0,
             where: Callable[[Received], bool] | None = None,
             timeout: float = WAIT_TIMEOUT) -> Deferred[Received]:
        """The first message (at or after ``after``) on ``topic`` (wildcards allowed)."""
        if isinstance(payload, str):
            payload = payload.encode()

        def match(m: Received) -> bool:
            return (self._mqtt.topic_matches_sub(topic, m.topic)
                    and (payload is None or m.payload == payload)
                    and (where is None or where(m)))

        self._drain()
        for m in self.messages[after:]:
            if match(m):
                return succeed(m)
        d: Deferred[Received] = Deferred()
        entry = (match, after, d)
        self._waiters.append(entry)

        def timed_out(failure: Failure) -> Failure:
            if entry in self._waiters:
                self._waiters.remove(entry)
            seen = "\n".join(f"  {m.topic} {m.payload!r} retain={m.retain}" for m in self.messages[after:][-40:])
            failure.value.args = (f"no message on {topic} payload={payload!r}; seen:\n{seen}",)
            return failure

        d.addTimeout(timeout, reactor)
        d.addErrback(timed_out)
        return d

    def publish(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            if self._pump.running:
                self._pump.stop()
