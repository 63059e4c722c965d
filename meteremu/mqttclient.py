"""A paho-mqtt 2.x client driven by the Twisted reactor: no loop thread, no blocking connect.

Shared by everything in meteremu that talks MQTT (the exporter; an MQTT input
source can reuse it: ``subscribe`` + ``on_message``). paho is imported lazily,
so importing this module for :class:`TLSOptions` costs nothing.

How paho is driven (its "external event loop" API):

* **Connecting.** paho's ``connect()``/``reconnect()`` open the TCP socket and
  do the TLS handshake synchronously (up to ``connect_timeout``), which must not
  happen on the reactor thread. So the connection is opened here without
  blocking: ``getaddrinfo`` runs in the reactor's thread pool (as Twisted's own
  resolver does; skipped for IP literals), the ``connect()`` is non-blocking and
  watched with ``addWriter``, and the TLS handshake is stepped by
  ``addReader``/``addWriter`` on ``SSLWantRead``/``SSLWantWrite``. The connected
  socket is then handed to paho: :class:`_HandedSocketClient` overrides paho's
  ``_create_socket()`` (the one place paho opens sockets, paho >= 2.0) to return
  it, so ``reconnect()`` only queues the CONNECT packet. If paho ever tried to
  open a socket itself the override raises instead of blocking (and
  ``reconnect_on_failure=False`` stops paho's own protocol-downgrade retry,
  which would call ``reconnect()`` from inside a callback).
* **Traffic.** ``on_socket_open`` registers a small descriptor with
  ``reactor.addReader`` (``doRead`` → ``loop_read()``, repeated while an SSL
  socket has decrypted bytes ``pending()``); ``on_socket_register_write`` →
  ``addWriter`` (``doWrite`` → ``loop_write()``); ``on_socket_unregister_write``
  and ``on_socket_close`` remove them. A 1 s ``LoopingCall`` runs
  ``loop_misc()`` (keepalive pings, ping timeouts). All paho callbacks run on the
  reactor thread.
* **Reconnecting.** paho reconnects only in its own loops, so this class does:
  exponential backoff from ``reconnect_delay`` doubling up to
  ``reconnect_max_delay``, with "equal jitter" (each wait is 50-100 % of the
  step), reset once a connection has stayed up for :data:`STABLE_AFTER` seconds.
  A CONNACK that does not arrive within ``connect_timeout`` counts as a failure.
  Unacknowledged QoS>0 messages are dropped on disconnect: users publish the
  current state again in ``on_connected`` (a stale queued retained message must
  not overwrite a newer one after a reconnect).

Secrets: the password goes only to paho; it is never part of a log event, an
error message or ``repr()``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from meteremu.backoff import next_delay
from meteremu.configtypes import Duration
from meteremu.logs import logger

log = logger(__name__)

STABLE_AFTER = 10.0
"""Seconds a connection must last before the reconnect backoff starts again from the first step."""

MISC_INTERVAL = 1.0
STOP_TIMEOUT = 3.0


class MQTTConfigError(Exception):
    """The MQTT settings cannot work (unreadable CA or certificate file…)."""


@dataclass(frozen=True)
class TLSOptions:
    """``tls:`` of an MQTT connection (``tls: true`` means all defaults)."""

    ca_file: str | None = field(default=None, metadata={
        "doc": "PEM file with the CA certificate(s) that signed the broker's certificate; default: the system's CAs"})
    certfile: str | None = field(default=None, metadata={
        "doc": "client certificate (PEM) for brokers that require one"})
    keyfile: str | None = field(default=None, metadata={
        "doc": "private key of the client certificate (PEM); default: read from certfile"})
    insecure: bool = field(default=False, metadata={
        "doc": "accept any broker certificate and host name (encrypted but not authenticated; trusted LAN only)"})

    def validate(self) -> list[tuple[str, str]]:
        if self.keyfile and not self.certfile:
            return [("keyfile", "a certfile as well (keyfile is the key of the client certificate)")]
        return []


def make_ssl_context(tls: TLSOptions) -> ssl.SSLContext:
    """An ``SSLContext`` for ``tls``; raises :class:`MQTTConfigError` naming the bad file."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.ca_file:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise MQTTConfigError(f"tls.ca_file: cannot load CA certificates from {tls.ca_file}: "
                                  f"{_error_text(exc)}") from None
    if tls.certfile:
        try:
            context.load_cert_chain(tls.certfile, tls.keyfile or None)
        except (OSError, ssl.SSLError) as exc:
            raise MQTTConfigError(f"tls.certfile: cannot load the client certificate {tls.certfile}"
                                  f"{' / ' + tls.keyfile if tls.keyfile else ''}: {_error_text(exc)}") from None
    return context


@dataclass(frozen=True)
class BrokerOptions:
    """The broker connection options shared by the MQTT exporter and the MQTT source.

    Each extends this with its own keys (and, for ``client_id`` and
    ``keepalive``, its own default and doc); the YAML keys are the same for both.
    """

    host: str = field(default="localhost", metadata={"doc": "broker host name or IP address"})
    port: int = field(default=1883, metadata={"doc": "broker port (usually 8883 with TLS)"})
    username: str | None = field(default=None, metadata={"doc": "user name, if the broker wants one"})
    password: str | None = field(default=None, repr=False, metadata={
        "doc": 'password; write "${MQTT_PASSWORD}" to keep it out of the file'})
    client_id: str | None = field(default=None, metadata={"doc": "MQTT client id"})
    tls: bool | TLSOptions = field(default=False, metadata={
        "doc": "true (system CAs) or {ca_file, certfile, keyfile, insecure}"})
    keepalive: Duration = field(default=60.0, metadata={"doc": "MQTT keepalive (pings when idle)"})
    connect_timeout: Duration = field(default=5.0, metadata={
        "doc": "how long one connection attempt (TCP, TLS, CONNACK) may take"})
    reconnect_delay: Duration = field(default=1.0, metadata={
        "doc": "first wait before reconnecting; doubles per failure, with jitter"})
    reconnect_max_delay: Duration = field(default=60.0, metadata={"doc": "longest wait between attempts"})

    @property
    def tls_options(self) -> TLSOptions | None:
        """``tls`` as TLSOptions (``true``: all defaults), or None without TLS."""
        if not self.tls:
            return None
        return self.tls if isinstance(self.tls, TLSOptions) else TLSOptions()

    @property
    def insecure(self) -> bool:
        """TLS without checking the broker's certificate (worth a warning at start)."""
        tls = self.tls_options
        return tls is not None and tls.insecure

    @property
    def address(self) -> str:
        return broker_address(self.host, self.port, bool(self.tls))

    def broker_errors(self) -> list[tuple[str, str]]:
        """validate() errors of the address and the credentials."""
        errors: list[tuple[str, str]] = []
        if not 1 <= self.port <= 65535:
            errors.append(("port", f"a port 1-65535; got {self.port}"))
        if self.password is not None and self.username is None:
            errors.append(("password", "a username as well (a password alone is never sent)"))
        return errors

    def client_id_errors(self) -> list[tuple[str, str]]:
        if self.client_id is not None and not self.client_id:
            return [("client_id", "a non-empty client id (or leave it out)")]
        return []

    def timing_errors(self) -> list[tuple[str, str]]:
        """validate() errors of keepalive, connect timeout and reconnect delays."""
        errors: list[tuple[str, str]] = []
        if not 5 <= self.keepalive <= 65535:
            errors.append(("keepalive", "a duration from 5s to 65535s"))
        if not self.connect_timeout > 0:
            errors.append(("connect_timeout", "a duration above 0"))
        if not self.reconnect_delay > 0:
            errors.append(("reconnect_delay", "a duration above 0"))
        if self.reconnect_max_delay < self.reconnect_delay:
            errors.append(("reconnect_max_delay", "a duration at least reconnect_delay"))
        return errors


def broker_address(host: str, port: int, tls: bool) -> str:
    """``mqtt(s)://host:port`` for logs and status (an IPv6 host in brackets)."""
    host = f"[{host}]" if ":" in host else host
    return f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"


def broker_settings(options: BrokerOptions, client_id: str, will: Message | None = None) -> BrokerSettings:
    """The client's settings from validated options; :class:`MQTTConfigError` names a bad TLS file."""
    tls = options.tls_options
    return BrokerSettings(
        host=options.host, port=options.port, client_id=client_id, username=options.username,
        password=options.password, ssl_context=make_ssl_context(tls) if tls is not None else None,
        keepalive=int(round(options.keepalive)), connect_timeout=options.connect_timeout,
        reconnect_delay=options.reconnect_delay, reconnect_max_delay=options.reconnect_max_delay, will=will)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes | str
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True)
class BrokerSettings:
    """How to reach the broker (built by the user of the client from its options)."""

    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = None
    keepalive: int = 60
    connect_timeout: float = 5.0
    reconnect_delay: float = 1.0
    reconnect_max_delay: float = 60.0
    will: Message | None = None
    max_queued: int = 1000

    @property
    def address(self) -> str:
        return broker_address(self.host, self.port, self.ssl_context is not None)


def backoff_delay(failures: int, first: float, cap: float, rnd: Callable[[], float] = random.random) -> float:
    """Wait before attempt number ``failures + 1``: ``first * 2**failures`` capped, times 0.5-1.0."""
    return next_delay(failures + 1, first, cap, rnd)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# -- non-blocking socket opening -------------------------------------------------------


class _FD:
    """A socket as a Twisted IReadWriteDescriptor whose events call plain functions."""

    def __init__(self, sock: Any, on_read: Callable[[], None] | None = None,
                 on_write: Callable[[], None] | None = None,
                 on_lost: Callable[[Failure], None] | None = None) -> None:
        self.sock = sock
        self.on_read, self.on_write, self.on_lost = on_read, on_write, on_lost

    def fileno(self) -> int:
        try:
            return self.sock.fileno()
        except (OSError, ValueError):
            return -1

    def doRead(self) -> None:
        if self.on_read is not None:
            self.on_read()

    def doWrite(self) -> None:
        if self.on_write is not None:
            self.on_write()

    def connectionLost(self, reason: Failure) -> None:
        if self.on_lost is not None:
            self.on_lost(reason)

    def logPrefix(self) -> str:
        return "mqtt"


def _forget(reactor: Any, fd: _FD) -> None:
    reactor.removeReader(fd)
    reactor.removeWriter(fd)


def _resolve(reactor: Any, host: str, port: int) -> Deferred[list[tuple[int, Any]]]:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return succeed([(family, (host, port))])

    def lookup() -> list[tuple[int, Any]]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(info[0], info[4]) for info in infos]

    d = deferToThreadPool(reactor, reactor.getThreadPool(), lookup)

    def failed(failure: Failure) -> Failure:
        if failure.check(socket.gaierror):
            raise ConnectionError(f"cannot resolve {host}: {_error_text(failure.value)}")
        return failure

    return d.addErrback(failed)


def _connect_tcp(reactor: Any, family: int, address: Any) -> Deferred[socket.socket]:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(address)
    except OSError as exc:
        sock.close()
        return fail(exc)
    if err == 0:
        return succeed(sock)
    if err not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
        sock.close()
        return fail(OSError(err, os.strerror(err)))

    def cancel(_: Deferred[socket.socket]) -> None:
        _forget(reactor, fd)
        sock.close()

    d: Deferred[socket.socket] = Deferred(cancel)

    def writable() -> None:
        _forget(reactor, fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            d.errback(OSError(err, os.strerror(err)))
        else:
            d.callback(sock)

    def lost(reason: Failure) -> None:
        _forget(reactor, fd)
        sock.close()
        if not d.called:
            d.errback(ConnectionError("socket lost while connecting"))

    fd = _FD(sock, on_write=writable, on_lost=lost)
    reactor.addWriter(fd)
    return d


def _connect_first(reactor: Any, addresses: list[tuple[int, Any]]) -> Deferred[socket.socket]:
    """Try the resolved addresses in order; the first that connects wins."""
    if not addresses:
        return fail(ConnectionError("the host name resolved to no address"))
    d = _connect_tcp(reactor, *addresses[0])
    if len(addresses) > 1:
        def next_one(failure: Failure) -> Any:
            if failure.check(OSError):
                return _connect_first(reactor, addresses[1:])
            return failure
        d.addErrback(next_one)
    return d


def _tls_handshake(reactor: Any, sock: socket.socket, context: ssl.SSLContext,
                   host: str) -> Deferred[ssl.SSLSocket]:
    try:
        tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    except (OSError, ValueError) as exc:
        sock.close()
        return fail(exc)

    def cancel(_: Deferred[ssl.SSLSocket]) -> None:
        _forget(reactor, fd)
        tls.close()

    d: Deferred[ssl.SSLSocket] = Deferred(cancel)

    def step() -> None:
        _forget(reactor, fd)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            reactor.addReader(fd)
        except ssl.SSLWantWriteError:
            reactor.addWriter(fd)
        except (OSError, ValueError) as exc:
            tls.close()
            d.errback(exc)
        else:
            d.callback(tls)

    def lost(reason: Failure) -> None:
        _forget(reactor, fd)
        tls.close()
        if not d.called:
            d.errback(ConnectionError("socket lost during the TLS handshake"))

    fd = _FD(tls, on_read=step, on_write=step, on_lost=lost)
    step()
    return d


def open_connection(reactor: Any, host: str, port: int,
                    ssl_context: ssl.SSLContext | None = None) -> Deferred[Any]:
    """A connected (and TLS-handshaken) non-blocking socket, without blocking the reactor.

    Cancelling the Deferred closes whatever socket is being opened.
    """
    d: Deferred[Any] = _resolve(reactor, host, port)
    d.addCallback(lambda addresses: _connect_first(reactor, addresses))
    if ssl_context is not None:
        d.addCallback(lambda sock: _tls_handshake(reactor, sock, ssl_context, host))
    return d


# -- paho ------------------------------------------------------------------------------

_client_class: Any = None


def _paho_client_class() -> Any:
    """paho's Client, taught to use a socket opened elsewhere (created on first use)."""
    global _client_class
    if _client_class is None:
        import paho.mqtt.client as mqtt

        if not hasattr(mqtt.Client, "_create_socket"):  # pragma: no cover - guarded by the pin
            raise RuntimeError("meteremu needs paho-mqtt >= 2.2, < 3 (Client._create_socket is missing)")

        class _HandedSocketClient(mqtt.Client):  # type: ignore[misc]
            """``reconnect()`` uses the socket in ``handed`` instead of opening one."""

            handed: Any = None

            def _create_socket(self) -> Any:
                sock, self.handed = self.handed, None
                if sock is None:
                    raise ConnectionError("no connected socket was handed over (paho must not connect itself)")
                return sock

        _client_class = _HandedSocketClient
    return _client_class


class ReactorMQTTClient:
    """One broker connection, kept up (with backoff) from ``start()`` until ``stop()``.

    Callbacks (all on the reactor thread): ``on_connected()`` after every
    successful CONNACK (subscriptions are renewed before it runs),
    ``on_disconnected(reason)`` when an established connection ends,
    ``on_message(topic, payload, retained)``, ``on_attempt(ok, error)`` after
    each connection attempt.
    """

    def __init__(self, settings: BrokerSettings, reactor: Any, *, name: str = "MQTT",
                 on_connected: Callable[[], None] | None = None,
                 on_disconnected: Callable[[str], None] | None = None,
                 on_message: Callable[[str, bytes, bool], None] | None = None,
                 on_attempt: Callable[[bool, str | None], None] | None = None,
                 rnd: Callable[[], float] = random.random) -> None:
        import paho.mqtt.client as mqtt

        self.settings, self.reactor, self.name = settings, reactor, name
        self.on_connected, self.on_disconnected = on_connected, on_disconnected
        self.on_message, self.on_attempt = on_message, on_attempt
        self._rnd = rnd
        self.connected = False
        self.last_error: str | None = None
        self._logged_error: str | None = None
        self._running = False
        self._failures = 0
        self._connected_at = 0.0
        self._opening: Deferred[Any] | None = None
        self._retry: Any = None
        self._connack_timer: Any = None
        self._fd: _FD | None = None
        self._attempt_error: str | None = None
        self._subscriptions: dict[str, int] = {}
        self._acks: dict[int, Deferred[None]] = {}
        self._closed: Deferred[None] | None = None
        self._unsent = 0
        self._misc = LoopingCall(self._loop_misc)
        self._misc.clock = reactor

        client = _paho_client_class()(
            mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id, clean_session=True,
            protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        client.suppress_exceptions = True
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.will is not None:
            will = settings.will
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        client.max_queued_messages_set(settings.max_queued)
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        client.on_log = self._paho_log
        # Only records host, port and keepalive; nothing is opened here.
        client.connect_async(settings.host, settings.port, keepalive=settings.keepalive)
        self._client = client
        self._mqtt = mqtt

    # -- public ----------------------------------------------------------------------
    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._misc.start(MISC_INTERVAL, now=False)
        self._attempt()

    def stop(self, final: Sequence[Message] = (), timeout: float = STOP_TIMEOUT) -> Deferred[None]:
        """Publish ``final`` (waiting for QoS>0 acks), disconnect cleanly, stop reconnecting.

        The returned Deferred fires within about ``timeout`` seconds whatever the broker does.
        """
        self._running = False
        if self._misc.running:
            self._misc.stop()
        for call in (self._retry, self._connack_timer):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._connack_timer = None
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None
        if not self.connected:
            self._force_close()
            return succeed(None)
        acks = []
        for message in final:
            mid = self._publish(message)
            if mid is not None and message.qos > 0:
                ack: Deferred[None] = Deferred()
                self._acks[mid] = ack
                acks.append(ack)
        d: Deferred[Any] = DeferredList(acks, consumeErrors=True) if acks else succeed(None)
        d.addTimeout(timeout / 2, self.reactor, onTimeoutCancel=lambda *_: None)

        def disconnect(_: Any) -> Deferred[None]:
            if self._client.socket() is None:
                return succeed(None)
            self._closed = Deferred()
            self._client.disconnect()
            closed = self._closed
            closed.addTimeout(timeout / 2, self.reactor, onTimeoutCancel=lambda *_: None)
            return closed

        d.addCallback(disconnect)

        def finish(_: Any) -> None:
            self._force_close()
            self._acks.clear()
            self._closed = None

        return d.addBoth(finish)

    def publish(self, message: Message) -> bool:
        """Hand a message to the connection; False if not connected or paho's queue is full."""
        if not self.connected:
            return False
        return self._publish(message) is not None

    def subscribe(self, topic: str, qos: int = 0) -> None:
        """Subscribe now (if connected) and after every reconnect."""
        self._subscriptions[topic] = qos
        if self.connected:
            self._client.subscribe(topic, qos)

    def backlog(self) -> int:
        """Messages published since the socket last had nothing left to write."""
        return self._unsent

    def socket(self) -> Any:
        """The connected socket (tests use it to simulate a dead connection)."""
        return self._client.socket()

    # -- connecting ---------------------------------------------------------------------
    def _attempt(self) -> None:
        self._retry = None
        if not self._running:
            return
        s = self.settings
        d = open_connection(self.reactor, s.host, s.port, s.ssl_context)
        d.addTimeout(s.connect_timeout, self.reactor)
        self._opening = d
        d.addCallbacks(self._hand_over, self._open_failed)
        d.addErrback(self._unexpected)

    def _unexpected(self, failure: Failure) -> None:
        log.failure("MQTT connection attempt failed unexpectedly", failure)
        if self._running and not self.connected and self._client.socket() is None:
            self._attempt_failed(f"unexpected error: {_error_text(failure.value)}")

    def _hand_over(self, sock: Any) -> None:
        self._opening = None
        if not self._running:
            sock.close()
            return
        self._attempt_error = None
        self._client.handed = sock
        try:
            rc = self._client.reconnect()
        except Exception as exc:  # noqa: BLE001 - paho raises plain exceptions here
            self._client.handed = None
            sock.close()
            self._attempt_failed(f"cannot start the MQTT session: {_error_text(exc)}")
            return
        if rc != self._mqtt.MQTT_ERR_SUCCESS and self._client.socket() is None:
            self._attempt_failed(f"cannot send CONNECT: {self._mqtt.error_string(rc)}")
            return
        self._connack_timer = self.reactor.callLater(self.settings.connect_timeout, self._connack_timeout)

    def _open_failed(self, failure: Failure) -> None:
        self._opening = None
        if failure.check(ssl.SSLCertVerificationError):
            why = f"TLS certificate rejected: {failure.value.verify_message or _error_text(failure.value)}"
        elif failure.check(ssl.SSLError):
            why = f"TLS handshake failed: {_error_text(failure.value)}"
        elif failure.check(OSError):
            why = _error_text(failure.value)
        elif failure.check(ConnectionError):
            why = str(failure.value)
        elif failure.check(defer.TimeoutError, defer.CancelledError):
            if not self._running:
                return
            why = f"no connection within {self.settings.connect_timeout:g} s"
        else:
            return failure  # type: ignore[return-value]
        self._attempt_failed(why)

    def _connack_timeout(self) -> None:
        self._connack_timer = None
        if not self.connected:
            self._attempt_error = f"no CONNACK within {self.settings.connect_timeout:g} s"
            self._force_close()

    def _attempt_failed(self, why: str) -> None:
        self.last_error = why
        self._report_attempt(False, why)
        self._schedule_retry()

    def _report_attempt(self, ok: bool, why: str | None) -> None:
        if self.on_attempt is not None:
            try:
                self.on_attempt(ok, why)
            except Exception:  # noqa: BLE001
                log.failure("MQTT on_attempt callback failed")

    def _schedule_retry(self) -> None:
        if not self._running or self._retry is not None:
            return
        s = self.settings
        delay = backoff_delay(self._failures, s.reconnect_delay, s.reconnect_max_delay, self._rnd)
        self._failures += 1
        why = self.last_error or "disconnected"
        if why != self._logged_error:
            self._logged_error = why
            log.warn("{name}: broker {address}: {why}; retrying (backoff up to {cap:g} s)",
                     name=self.name, address=s.address, why=why, cap=s.reconnect_max_delay)
        else:
            log.debug("{name}: broker {address}: {why}; next attempt in {delay:.1f} s",
                      name=self.name, address=s.address, why=why, delay=delay)
        self._retry = self.reactor.callLater(delay, self._attempt)

    def _force_close(self) -> None:
        """Close the paho socket now; paho then reports the disconnect as usual."""
        sock = self._client.socket()
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._client.loop_read()  # reads EOF: paho closes the socket and calls on_disconnect
        except Exception:  # noqa: BLE001
            log.failure("MQTT: closing the socket failed")
        if self._client.socket() is not None:  # pragma: no cover - paho always closes on EOF
            self._client.disconnect()

    # -- paho's socket hooks ----------------------------------------------------------
    def _socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self._fd = _FD(sock, on_read=self._read, on_write=self._write, on_lost=self._lost)
        self.reactor.addReader(self._fd)

    def _socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._unsent = 0
        if self._fd is not None:
            _forget(self.reactor, self._fd)
            self._fd = None

    def _register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        if self._fd is not None:
            self.reactor.addWriter(self._fd)

    def _unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._unsent = 0
        if self._fd is not None:
            self.reactor.removeWriter(self._fd)

    def _read(self) -> None:
        client = self._client
        sock = client.socket()
        client.loop_read()
        # An SSL socket may hold decrypted bytes the poller cannot see.
        for _ in range(1000):
            if client.socket() is not sock or sock is None or not getattr(sock, "pending", lambda: 0)():
                break
            client.loop_read()

    def _write(self) -> None:
        self._client.loop_write()

    def _lost(self, reason: Failure) -> None:
        self._fd = None
        self._force_close()

    def _loop_misc(self) -> None:
        try:
            if self._client.socket() is not None:
                self._client.loop_misc()
        except Exception:  # noqa: BLE001 - keep the LoopingCall alive
            log.failure("MQTT: loop_misc failed")

    # -- paho's callbacks -------------------------------------------------------------
    def _paho_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self._connack_timer is not None and self._connack_timer.active():
            self._connack_timer.cancel()
        self._connack_timer = None
        if reason.is_failure:
            # paho closes the socket next and calls on_disconnect, which schedules the retry.
            self._attempt_error = f"broker refused the connection: {reason}"
            return
        self.connected = True
        self._connected_at = self.reactor.seconds()
        log.info("{name}: connected to {address} as {client_id}",
                 name=self.name, address=self.settings.address, client_id=self.settings.client_id)
        self._logged_error = None
        self.last_error = None
        self._report_attempt(True, None)
        if self._subscriptions:
            client.subscribe(list(self._subscriptions.items()))
        if self.on_connected is not None:
            try:
                self.on_connected()
            except Exception:  # noqa: BLE001
                log.failure("MQTT on_connected callback failed")

    def _paho_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was_connected = self.connected
        self.connected = False
        self._unsent = 0
        if self._connack_timer is not None and self._connack_timer.active():
            self._connack_timer.cancel()
        self._connack_timer = None
        drop = getattr(client, "drop_out_messages", None)  # paho >= 2.2
        if drop is not None:
            drop()
        for ack in list(self._acks.values()):
            if not ack.called:
                ack.callback(None)
        self._acks.clear()
        if self._closed is not None:
            # paho closes the socket right after this callback: fire once it has.
            closed = self._closed
            self.reactor.callLater(0, lambda: closed.called or closed.callback(None))
        if not self._running:
            return
        if was_connected:
            if self.reactor.seconds() - self._connected_at >= STABLE_AFTER:
                self._failures = 0
            detail = str(reason)
            self.last_error = "connection lost" + (
                f" ({detail})" if detail not in ("Unspecified error", "Success", "Normal disconnection") else "")
            if self.on_disconnected is not None:
                try:
                    self.on_disconnected(self.last_error)
                except Exception:  # noqa: BLE001
                    log.failure("MQTT on_disconnected callback failed")
        else:
            self.last_error = self._attempt_error or f"disconnected before CONNACK ({reason})"
            self._report_attempt(False, self.last_error)
        # paho may still be inside its socket handling: retry from a clean stack.
        self._schedule_retry()

    def _paho_message(self, client: Any, userdata: Any, message: Any) -> None:
        if self.on_message is not None:
            try:
                self.on_message(message.topic, bytes(message.payload), bool(message.retain))
            except Exception:  # noqa: BLE001
                log.failure("MQTT on_message callback failed")

    def _paho_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        ack = self._acks.pop(mid, None)
        if ack is not None and not ack.called:
            ack.callback(None)

    def _paho_log(self, client: Any, userdata: Any, level: int, text: str) -> None:
        if level == self._mqtt.MQTT_LOG_ERR:
            log.warn("paho-mqtt: {text}", text=text)

    def _publish(self, message: Message) -> int | None:
        info = self._client.publish(message.topic, message.payload, message.qos, message.retain)
        if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
            return None
        self._unsent += 1
        return info.mid
