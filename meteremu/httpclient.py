"""The one HTTP client room: every HTTP request meteremu makes goes through here.

Used by the Envoy, Home Assistant (REST) and HomeWizard sources and by the
InfluxDB exporter. What it guarantees (design.md §3, specs/twisted.md §5):

* **The whole exchange is bounded**: connect, headers *and* body together
  within ``timeout`` (``treq``'s own ``timeout`` stops at the headers).
* **A body read is bounded and cancellable**: :func:`read_body` collects with
  ``treq.content.collect``, up to ``limit`` bytes (more fails with
  :class:`BodyTooLarge`, or is cut off with ``truncate``), and cancelling it
  closes the connection. treq's collector has no canceller, and Twisted's
  ``readBody`` looks for an ``abortConnection`` the response transport does
  not have: a stalled body would keep its socket open forever.
* **A quiet pool**: the pool's connections are made through
  :class:`QuietEndpoints`, whose factories do not log "Starting factory" for
  each connection (devices that close connections often would flood the
  journal). That uses only public API: ``Agent.usingEndpointFactory``.
* **One TLS policy per client** (:mod:`meteremu.tls`): the device's own
  (pinned, CA, or none) or the web's.
* **One description of failures**: :func:`meteremu.failures.describe`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import treq
from treq.content import collect
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from meteremu.failures import Explained, describe
from meteremu.interfaces import IReactor, IReactorTime
from meteremu.tls import TLSPolicy, web_policy

MAX_BODY = 4 * 1024 * 1024
ERROR_BODY = 64 * 1024
"""How much of an error response's body is kept (the rest is read and dropped)."""

__all__ = ["ERROR_BODY", "MAX_BODY", "BodyTooLarge", "HTTPClient", "HttpResult", "QuietEndpoints",
           "describe", "read_body"]


class BodyTooLarge(Explained):
    pass


@dataclass(frozen=True)
class HttpResult:
    """One answer: the status, its headers (lower-case names, the last value of each) and its body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


# -- reading a body --------------------------------------------------------------------------


@implementer(IResponse)
class _Watched:
    """The response as ``collect`` sees it; remembers the body protocol, whose
    transport is the only handle that can close a stalled body's connection."""

    def __init__(self, response: IResponse) -> None:
        self._response = response
        self.protocol: IProtocol | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def deliverBody(self, protocol: IProtocol) -> None:
        self.protocol = protocol
        self._response.deliverBody(protocol)

    def close(self) -> None:
        transport = getattr(self.protocol, "transport", None)
        if transport is not None:
            transport.loseConnection()


def read_body(response: IResponse, limit: int = MAX_BODY, *, truncate: bool = False) -> Deferred[bytes]:
    """The whole body, at most ``limit`` bytes; cancelling the Deferred closes the connection.

    A longer body fails with :class:`BodyTooLarge` (and its connection is
    closed), or with ``truncate`` is cut to ``limit`` (the rest is read and dropped).
    """
    parts: list[bytes] = []
    size = 0

    def take(data: bytes) -> None:
        nonlocal size
        room = limit - size
        if len(data) > room:
            if not truncate:
                raise BodyTooLarge(f"body larger than {limit} bytes")
            data = data[:max(room, 0)]
        size += len(data)
        if data:
            parts.append(data)

    def finish(outcome: bytes | Failure) -> None:
        if result.called:  # cancelled: the connection's end comes later and is dropped
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    watched = _Watched(response)
    result: Deferred[bytes] = Deferred(lambda _: watched.close())
    collect(watched, take).addCallback(lambda _: b"".join(parts)).addBoth(finish)
    return result


# -- the pool's connections, made quietly ---------------------------------------------------------


# Factory[Any]: the wrapped factory's protocols are any IProtocol, not necessarily the
# Protocol-with-a-factory that Twisted's Factory is typed to build.
class _QuietFactory(Factory[Any]):
    """Builds the wrapped factory's protocols; starting and stopping it logs nothing."""

    noisy = False

    def __init__(self, wrapped: IProtocolFactory) -> None:
        self.wrapped = wrapped

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        return self.wrapped.buildProtocol(addr)


@implementer(IStreamClientEndpoint)
class _QuietEndpoint:
    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self.endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return self.endpoint.connect(_QuietFactory(protocolFactory))


@implementer(IAgentEndpointFactory)
class QuietEndpoints:
    """Endpoints for an ``Agent``, as its standard ones (TCP, TLS by ``policy``), but quiet."""

    def __init__(self, reactor: IReactor, policy: TLSPolicy, connect_timeout: float | None = None) -> None:
        self.reactor = reactor
        self.policy = policy
        self.connect_timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        endpoint: IStreamClientEndpoint
        if self.connect_timeout is not None:
            endpoint = HostnameEndpoint(self.reactor, host, uri.port, timeout=self.connect_timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), endpoint)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
        return _QuietEndpoint(endpoint)


# -- the client -------------------------------------------------------------------------------------


class HTTPClient:
    """treq over its own quiet pool; every request bounded as a whole by ``timeout``.

    ``reactor`` makes the connections, ``clock`` (default: the reactor) times
    the requests out: tests drive it. ``per_host`` connections are kept per
    host for ``idle_timeout`` seconds; ``retry`` lets the pool retry an
    idempotent request once on a connection that turned out to be dead.
    ``timeout`` may be changed between requests. ``close()`` cancels what is
    in flight and closes the pool's connections.
    """

    def __init__(self, reactor: IReactor, timeout: float, tls: TLSPolicy | None = None, *,
                 clock: IReactorTime | None = None,
                 persistent: bool = True, per_host: int = 1, idle_timeout: float = 30.0, retry: bool = False,
                 connect_timeout: float | None = None) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.pool.maxPersistentPerHost = per_host
        # Twisted infers int from the class default (240); it is seconds, handed to callLater.
        self.pool.cachedConnectionTimeout = idle_timeout  # type: ignore[assignment]
        self.pool.retryAutomatically = retry
        endpoints = QuietEndpoints(reactor, tls if tls is not None else web_policy(),
                                   connect_timeout if connect_timeout is not None else timeout)
        self._client = treq.client.HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=self.pool))
        self._inflight: set[Deferred[Any]] = set()

    def request(self, method: str, url: str, headers: Mapping[str, Any] | Mapping[bytes, Any] | None = None,
                data: Any = None, json_body: Any = None, limit: int = MAX_BODY, *, truncate: bool = False,
                redirects: bool = False) -> Deferred[HttpResult]:
        """One exchange; the body of an error status (3xx-5xx) is kept up to :data:`ERROR_BODY`."""
        async def exchange() -> HttpResult:
            kwargs: dict[str, Any] = {"headers": dict(headers or {}), "unbuffered": True,
                                      "allow_redirects": redirects}
            if data is not None:
                kwargs["data"] = data
            if json_body is not None:
                kwargs["json"] = json_body
            response = await self._client.request(method, url, **kwargs)
            if response.code < 300:
                body = await read_body(response, limit, truncate=truncate)
            else:
                body = await read_body(response, min(limit, ERROR_BODY), truncate=True)
            found = {name.decode("latin-1").lower(): values[-1].decode("latin-1")
                     for name, values in response.headers.getAllRawHeaders()}
            return HttpResult(response.code, found, body)

        d = ensureDeferred(exchange())
        d.addTimeout(self.timeout, self.clock)
        self._inflight.add(d)
        return d.addBoth(self._done, d)

    def _done(self, result: Any, d: Deferred[Any]) -> Any:
        self._inflight.discard(d)
        return result

    @property
    def busy(self) -> bool:
        """A request is in flight."""
        return bool(self._inflight)

    def close(self) -> Deferred[Any]:
        for d in list(self._inflight):
            d.cancel()
        return DeferredList([self.pool.closeCachedConnections()], consumeErrors=True)
