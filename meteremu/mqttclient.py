"""A paho-mqtt 2.x client driven by the Twisted reactor: no loop thread, no blocking call.

Shared by everything in meteremu that talks MQTT (the exporter, the MQTT
source: ``subscribe`` + ``on_message``). The options and settings live in
:mod:`meteremu.mqttoptions` (validating a config loads neither paho nor this).

Why it is built this way:

* **Twisted makes the connection, ClientService keeps it up.** paho's
  ``connect()``/``reconnect()`` open the TCP socket and do the TLS handshake
  synchronously, which must not happen on the reactor thread, and paho
  reconnects only in its own loops. So the connection is an endpoint
  (``HostnameEndpoint``: resolution off the reactor thread, IPv4 and IPv6;
  ``wrapClientTLS`` for TLS) kept up by Twisted's ``ClientService``
  (:mod:`meteremu.reconnect`), with meteremu's backoff: from
  ``reconnect_delay`` doubling up to ``reconnect_max_delay``, each wait 50-100 %
  of its step, reset once a connection has lasted :data:`STABLE_AFTER`
  seconds (ClientService's own count resets on every TCP connect, which a
  broker refusing the login also accepts).
* **TLS is Twisted's** (pyOpenSSL, loaded when a TLS broker is configured):
  the CA file, client certificate and key come from ``TLSOptions``; the host
  name is checked as for every other TLS client in meteremu, ``insecure``
  uses the device policy's "no verification" (:class:`meteremu.tls.DeviceTLS`).
  Doing TLS with the standard library over a Twisted transport would need a
  hand-written memory-BIO pump; a hand-rolled TLS pump is exactly what not to
  own.
* **paho speaks MQTT over a socket-like object**, :class:`_BrokerConnection`:
  the Twisted protocol of the connection on one side, paho's socket on the
  other. ``dataReceived`` buffers, ``loop_read()`` takes it with ``recv``;
  paho's ``send`` writes to the transport, unless the transport has asked its
  producer to pause (its buffer is full: a broker that stopped reading), then
  ``send`` would block like a full socket and paho keeps the packet until
  ``resumeProducing``. A lost connection is an end of file to paho. The one
  private paho name this needs (its socket hook) is in :mod:`meteremu.compat.paho`.
* paho's external-loop callbacks do the rest: ``on_socket_register_write`` →
  ``loop_write()`` on the next reactor turn, and a 1 s ``LoopingCall`` runs
  ``loop_misc()`` (keepalive pings, ping timeouts). All paho callbacks run on
  the reactor thread. A CONNACK that does not arrive within
  ``connect_timeout`` counts as a failure. Unacknowledged QoS>0 messages are
  dropped on disconnect: users publish the current state again in
  ``on_connected`` (a stale queued retained message must not overwrite a
  newer one after a reconnect).

Secrets: the password goes only to paho; it is never part of a log event, an
error message or ``repr()``.
"""

from __future__ import annotations

import random
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer, error
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IStreamClientEndpoint,
    ISystemHandle,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from meteremu.compat.paho import client_class
from meteremu.failures import describe, exception_of, is_tls_error
from meteremu.interfaces import IReactor
from meteremu.logs import logger
from meteremu.mqttoptions import (
    BrokerOptions,
    BrokerSettings,
    Message,
    MQTTConfigError,
    TLSOptions,
    backoff_delay,
    broker_address,
)
from meteremu.reconnect import Reconnector, protocol_factory
from meteremu.tls import DeviceTLS, pem_blocks

__all__ = ["STABLE_AFTER", "STOP_TIMEOUT", "BrokerOptions", "BrokerSettings", "MQTTConfigError", "Message",
           "ReactorMQTTClient", "TLSOptions", "backoff_delay", "broker_address", "broker_settings", "client_tls"]

log = logger(__name__)

STABLE_AFTER = 10.0
"""Seconds a connection must last before the reconnect backoff starts again from the first step."""

MISC_INTERVAL = 1.0
STOP_TIMEOUT = 3.0
WAIT_WHILE_STOPPING = 3600.0  # stop() cancels it: a retry never comes while stopping


# -- settings ---------------------------------------------------------------------------------


def broker_settings(options: BrokerOptions, client_id: str, will: Message | None = None) -> BrokerSettings:
    """The client's settings from validated options; :class:`MQTTConfigError` names a bad TLS file."""
    tls = options.tls_options
    return BrokerSettings(
        host=options.host, port=options.port, client_id=client_id, username=options.username,
        password=options.password, tls=client_tls(tls, options.host) if tls is not None else None,
        keepalive=int(round(options.keepalive)), connect_timeout=options.connect_timeout,
        reconnect_delay=options.reconnect_delay, reconnect_max_delay=options.reconnect_max_delay, will=will)


def client_tls(tls: TLSOptions, host: str) -> Any:
    """The TLS connection creator for a broker at ``host`` (this loads pyOpenSSL).

    Raises :class:`MQTTConfigError` naming the key and the file that cannot be used.
    """
    from twisted.internet import ssl

    client = _client_certificate(tls) if tls.certfile else None
    if tls.insecure:
        return DeviceTLS(verify=False, client=client).creatorForNetloc(host.encode(), 0)
    roots = None
    if tls.ca_file:
        try:
            with open(tls.ca_file, "rb") as handle:
                blocks = pem_blocks(handle.read())
            if not blocks:
                raise ValueError("no PEM certificate found")
            roots = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(block) for block in blocks])
        except Exception as exc:  # noqa: BLE001 - OSError, ValueError, OpenSSL's errors
            raise MQTTConfigError(f"tls.ca_file: cannot load CA certificates from {tls.ca_file}: "
                                  f"{_error_text(exc)}") from None
    return ssl.optionsForClientTLS(host, trustRoot=roots, clientCertificate=client)


def _client_certificate(tls: TLSOptions) -> Any:
    from twisted.internet import ssl

    assert tls.certfile is not None
    try:
        pem = b""
        for path in (tls.certfile, tls.keyfile):
            if path:
                with open(path, "rb") as handle:
                    pem += handle.read() + b"\n"
        return ssl.PrivateCertificate.loadPEM(pem)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, OpenSSL's errors
        raise MQTTConfigError(f"tls.certfile: cannot load the client certificate {tls.certfile}"
                              f"{' / ' + tls.keyfile if tls.keyfile else ''}: {_error_text(exc)}") from None


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if is_tls_error(exc):
        return _openssl_reasons(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def _openssl_reasons(exc: BaseException) -> str:
    """The reason strings of a pyOpenSSL error (``[(lib, func, reason), …]``)."""
    errors = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    return "; ".join(str(e[-1]) for e in errors if isinstance(e, tuple) and e) or str(exc)


def _tls_problem(reason: Failure) -> str | None:
    """Why a TLS connection ended before it was usable, or None if TLS was not the reason."""
    exc = exception_of(reason)
    if is_tls_error(exc):
        text = _openssl_reasons(exc)
        if "certificate verify failed" in text:
            return f"TLS certificate rejected: {text}"
        return f"TLS handshake failed: {text}"
    identity = getattr(sys.modules.get("service_identity"), "VerificationError", None)
    if isinstance(identity, type) and isinstance(exc, identity):
        return f"TLS certificate rejected: {exc}"
    return None


# -- paho's socket over a Twisted transport ----------------------------------------------------


class _Transport(ITCPTransport, IConsumer, ISystemHandle):
    """The broker connection's transport: TCP, or TLS over it (a typing device only)."""


@implementer(IPushProducer)
class _BrokerConnection(Protocol):
    """The broker connection: a Twisted protocol, and the socket paho reads and writes.

    paho calls ``setblocking``, ``recv``, ``send`` and ``close``
    (``paho.mqtt.client.SocketLike``).
    """

    transport: _Transport  # set by makeConnection

    def __init__(self, client: ReactorMQTTClient) -> None:
        self.client = client
        self.paused = False
        self.eof = False
        self._inbox: deque[memoryview] = deque()
        self.unread = 0

    # -- Twisted's side --
    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.client._connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._inbox.append(memoryview(data))
        self.unread += len(data)
        self.client._readable(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.eof = True
        self.client._lost(self, reason)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.client._writable(self)

    def stopProducing(self) -> None:
        self.paused = True

    # -- paho's side --
    def setblocking(self, flag: bool) -> None:
        pass

    def recv(self, size: int) -> bytes:
        if not self._inbox:
            if self.eof:
                return b""
            raise BlockingIOError()
        chunk = self._inbox[0]
        if len(chunk) <= size:
            self._inbox.popleft()
        else:
            chunk, self._inbox[0] = chunk[:size], chunk[size:]
        self.unread -= len(chunk)
        return bytes(chunk)

    def send(self, data: bytes | bytearray) -> int:
        if self.eof:
            raise ConnectionError("the connection is closed")
        if self.paused:
            raise BlockingIOError()  # the transport's buffer is full
        self.transport.write(bytes(data))
        return len(data)

    def close(self) -> None:
        if not self.eof and self.transport is not None:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def abort(self) -> None:
        if not self.eof and self.transport is not None:
            self.transport.abortConnection()


# -- the client -----------------------------------------------------------------------------------


class ReactorMQTTClient:
    """One broker connection, kept up (with backoff) from ``start()`` until ``stop()``.

    Callbacks (all on the reactor thread): ``on_connected()`` after every
    successful CONNACK (subscriptions are renewed before it runs),
    ``on_disconnected(reason)`` when an established connection ends,
    ``on_message(topic, payload, retained)``, ``on_attempt(ok, error)`` after
    each connection attempt.
    """

    def __init__(self, settings: BrokerSettings, reactor: IReactor, *, name: str = "MQTT",
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
        self.connecting = False  # a connection attempt is in flight
        self.last_error: str | None = None
        self._logged_error: str | None = None
        self._running = False
        self._failures = 0
        self._connected_at = 0.0
        self._broker: _BrokerConnection | None = None
        self._connack_timer: Any = None
        self._write_call: Any = None
        self._attempt_error: str | None = None
        self._subscriptions: dict[str, int] = {}
        self._acks: dict[int, Deferred[None]] = {}
        self._closed: Deferred[None] | None = None
        self._unsent = 0
        self._misc = LoopingCall(self._loop_misc)
        self._misc.clock = reactor
        endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, settings.host, settings.port,
                                                           timeout=settings.connect_timeout)
        if settings.tls is not None:
            endpoint = wrapClientTLS(settings.tls, endpoint)
        self._reconnector = Reconnector(endpoint, protocol_factory(lambda _: _BrokerConnection(self)),
                                        clock=reactor, reactor=reactor, retry=self._retry_delay,
                                        attempting=self._attempting, failed=self._open_failed,
                                        name=f"{name}: broker {settings.address}")

        client = client_class()(
            mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id, clean_session=True,
            protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        client.suppress_exceptions = True
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.will is not None:
            will = settings.will
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        client.max_queued_messages_set(settings.max_queued)
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
        self._reconnector.start()

    def stop(self, final: Sequence[Message] = (), timeout: float = STOP_TIMEOUT) -> Deferred[None]:
        """Publish ``final`` (waiting for QoS>0 acks), disconnect cleanly, stop reconnecting.

        The returned Deferred fires within about ``timeout`` seconds whatever the broker does.
        """
        self._running = False
        if self._misc.running:
            self._misc.stop()
        self._cancel_connack()
        if not self.connected:
            return self._reconnector.stop()
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

        def finish(_: Any) -> Deferred[None]:
            self._force_close()
            self._acks.clear()
            self._closed = None
            return self._reconnector.stop()  # stopping already, since paho closed its socket

        return d.addCallback(disconnect).addBoth(finish)

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
        """Messages published since paho last had nothing left to hand to the transport."""
        return self._unsent

    def socket(self) -> Any:
        """The connection's OS socket while paho uses it (tests use it to simulate a dead connection)."""
        broker = self._broker
        if broker is None or self._client.socket() is not broker or broker.transport is None:
            return None
        return broker.transport.getHandle()

    # -- connecting (ClientService's hooks, see meteremu.reconnect) -------------------------
    def _attempting(self) -> None:
        self.connecting = True
        self._attempt_error = None

    def _open_failed(self, failure: Failure) -> None:
        self.connecting = False
        if not self._running or failure.check(defer.CancelledError):
            return
        if failure.check(error.TimeoutError):
            why = f"no connection within {self.settings.connect_timeout:g} s"
        else:
            why = describe(failure)
        self._attempt_failed(why)

    def _retry_delay(self) -> float:
        """ClientService's retry policy: meteremu's backoff, logged once per new error."""
        if not self._running:
            return WAIT_WHILE_STOPPING
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
        return delay

    def _connected(self, broker: _BrokerConnection) -> None:
        """The transport is up (TLS may still be handshaking): paho starts its session on it."""
        self.connecting = False
        if not self._running:
            broker.abort()
            return
        self._broker = broker
        self._client.handed = broker
        try:
            rc = self._client.reconnect()
        except Exception as exc:  # noqa: BLE001 - paho raises plain exceptions here
            self._client.handed = None
            self._attempt_failed(f"cannot start the MQTT session: {_error_text(exc)}")
            broker.abort()
            return
        if rc != self._mqtt.MQTT_ERR_SUCCESS and self._client.socket() is None:
            self._attempt_failed(f"cannot send CONNECT: {self._mqtt.error_string(rc)}")
            broker.abort()
            return
        self._connack_timer = self.reactor.callLater(self.settings.connect_timeout, self._connack_timeout)

    def _connack_timeout(self) -> None:
        self._connack_timer = None
        if not self.connected:
            self._attempt_error = f"no CONNACK within {self.settings.connect_timeout:g} s"
            self._force_close()

    def _cancel_connack(self) -> None:
        if self._connack_timer is not None and self._connack_timer.active():
            self._connack_timer.cancel()
        self._connack_timer = None

    def _attempt_failed(self, why: str) -> None:
        self.last_error = why
        self._report_attempt(False, why)

    def _report_attempt(self, ok: bool, why: str | None) -> None:
        if self.on_attempt is not None:
            try:
                self.on_attempt(ok, why)
            except Exception:  # noqa: BLE001
                log.failure("MQTT on_attempt callback failed")

    def _force_close(self) -> None:
        """Abort the connection; paho hears of it as an end of file, and reports the disconnect."""
        if self._broker is not None:
            self._broker.abort()

    # -- the connection's events ----------------------------------------------------------
    def _readable(self, broker: _BrokerConnection) -> None:
        client = self._client
        while broker.unread and client.socket() is broker:
            before = broker.unread
            try:
                client.loop_read()
            except Exception:  # noqa: BLE001 - keep the connection's protocol alive
                log.failure("MQTT: reading from the broker failed")
                return
            if broker.unread == before:
                return  # a packet is incomplete: wait for more

    def _writable(self, broker: _BrokerConnection) -> None:
        if self._client.want_write():
            self._register_write(self._client, None, broker)

    def _lost(self, broker: _BrokerConnection, reason: Failure | None) -> None:
        self.connecting = False
        if broker is not self._broker:
            return
        self._broker = None
        if not self.connected and self._attempt_error is None and reason is not None:
            self._attempt_error = _tls_problem(reason)
        self._readable(broker)  # what came before the end
        if self._client.socket() is broker:
            self._client.loop_read()  # the end of file: paho closes its socket and reports the disconnect
        if self._client.socket() is broker:  # pragma: no cover - paho always closes on end of file
            self._client.disconnect()

    def _loop_misc(self) -> None:
        try:
            if self._client.socket() is not None:
                self._client.loop_misc()
        except Exception:  # noqa: BLE001 - keep the LoopingCall alive
            log.failure("MQTT: loop_misc failed")

    # -- paho's socket hooks ----------------------------------------------------------
    def _socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._unsent = 0
        if not self._running:
            # The goodbye is written: ClientService closes the connection, arming no retry.
            self._reconnector.stop()

    def _register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        broker = self._broker
        if self._write_call is None and broker is not None and not broker.paused:
            self._write_call = self.reactor.callLater(0, self._write)

    def _unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._unsent = 0

    def _write(self) -> None:
        self._write_call = None
        broker = self._broker
        if broker is not None and not broker.paused and self._client.socket() is broker:
            self._client.loop_write()

    # -- paho's callbacks -------------------------------------------------------------
    def _paho_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._cancel_connack()
        if reason.is_failure:
            # paho closes the socket next and calls on_disconnect, which reports the attempt.
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
        self._cancel_connack()
        client.drop_out_messages()
        for ack in list(self._acks.values()):
            if not ack.called:
                ack.callback(None)
        self._acks.clear()
        if self._closed is not None:
            # paho closes the socket right after this callback: fire once it has.
            closed = self._closed

            def fire_closed() -> None:
                if not closed.called:
                    closed.callback(None)

            self.reactor.callLater(0, fire_closed)
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
        # ClientService hears of the closed connection next, and asks _retry_delay for the wait.

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
