"""One short, secret-free description of a failed exchange with a device or service.

Every client in meteremu (the HTTP room, the reconnecting stream sources, the
InfluxDB exporter) tells the user why it could not talk to the other end in
the same words: ``connection refused``, ``timed out``, ``host name not
found``… The text is built from exception *types* and the operating system's
error string, never from a request, so no token or password can end up in it.

Importing this module loads no client library: it only recognises the
exception types of the libraries that are already loaded (an OpenSSL error can
only exist once pyOpenSSL is imported, a ``ResponseFailed`` once
``twisted.web.client`` is).
"""

from __future__ import annotations

import sys

from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.python.failure import Failure


class Explained(Exception):
    """An error whose message already says what went wrong (an HTTP status, a refused token…)."""


def _loaded_type(module: str, name: str) -> type | None:
    """``module.name`` if that module is already imported (never imports it)."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def exception_of(failure: Failure | BaseException) -> BaseException:
    """The exception behind ``failure`` (a Failure's ``value``, or the exception itself).

    Twisted types ``Failure.value`` as ``BaseException | None`` (it is filled
    in from ``sys.exc_info()`` while the Failure is built), but a Failure
    always holds one: ``Failure()`` raises ``NoCurrentExceptionError`` when
    there is none.
    """
    if not isinstance(failure, Failure):
        return failure
    value = failure.value
    assert value is not None, "a Failure always holds an exception"
    return value


def is_tls_error(exc: BaseException) -> bool:
    """An OpenSSL error (a failed or refused TLS handshake)."""
    ssl_error = _loaded_type("OpenSSL.SSL", "Error")
    return ssl_error is not None and isinstance(exc, ssl_error)


def describe(failure: Failure | BaseException, timeout: float | None = None) -> str:
    """Why an exchange failed, in a few words (``timeout``: say how long was waited).

    twisted.web wraps the real cause of a failed request (``ResponseNeverReceived``,
    ``RequestTransmissionFailed``): the cause is described. A response whose
    body was cut off (``ResponseFailed``) says so, with the cause.
    """
    exc = exception_of(failure)
    if isinstance(exc, Explained):
        return str(exc)
    reasons = getattr(exc, "reasons", None)
    if reasons and isinstance(reasons[0], Failure):
        inner = describe(reasons[0], timeout)
        # ResponseNeverReceived is a ResponseFailed too, but nothing was cut off there.
        if type(exc) is _loaded_type("twisted.web.client", "ResponseFailed"):
            return f"answer cut off ({inner})"
        return inner
    if isinstance(exc, defer.TimeoutError | defer.CancelledError):
        return f"no answer within {timeout:g} s" if timeout is not None else "timed out"
    if isinstance(exc, net_error.TimeoutError):
        return "connect timed out"
    if isinstance(exc, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, net_error.DNSLookupError):
        return "host name not found"
    if isinstance(exc, net_error.ConnectionDone):
        return "closed by the other end"
    if isinstance(exc, net_error.ConnectionLost):
        return "connection lost"
    if is_tls_error(exc):
        return "TLS handshake failed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text[:160]}" if text and text != name else name
