"""Twisted TCP transports: how much is still unsent, and sending right away.

Private names used (checked with Twisted 24.7 to 26.10; the contract test in
``tests/unit/test_compat.py`` and ``tests/integration/test_compat.py`` fails when an upgrade changes them):

* ``tcp.Connection.dataBuffer`` / ``offset`` (bytes queued by ``write`` and
  how far sending got) and ``_tempDataLen`` (bytes of small writes not yet
  joined into ``dataBuffer``): together the bytes written and not yet sent.
  Twisted has no public "bytes pending" (``IConsumer`` only offers
  producers), and a WebSocket server must know when a client stopped reading.
* :func:`release_buffers` empties those same attributes on a closed
  connection.
* ``getHandle()`` of ``tcp.Server`` is public, but sending on it directly
  bypasses the transport's buffer: :func:`write_now` only does so when that
  buffer is empty, so the byte order is kept.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def backlog(transport: Any) -> int:
    """Bytes written to a Twisted TCP transport and not yet sent."""
    data = getattr(transport, "dataBuffer", b"")
    offset = getattr(transport, "offset", 0)
    return max(0, len(data) - offset) + getattr(transport, "_tempDataLen", 0)


def write_now(transport: Any, data: bytes) -> bool:
    """Send ``data`` on a plain TCP transport right away; False if it must be queued.

    Twisted queues every ``write`` until the reactor's next turn, and on the
    asyncio reactor each queued write costs an ``add_writer``/``remove_writer``
    pair (two epoll_ctl calls and a callback): in a fan-out to hundreds of
    clients the last one waits for all of them (measured: about 40 µs a
    client). When nothing is queued on the transport, a ``send()`` now is what
    the reactor would do on its next turn anyway; whatever the kernel does not
    take is queued with ``write`` behind it, so the byte order is kept. TLS
    transports, closing ones and ones with queued bytes take the normal path.
    """
    if (type(transport) is not tcp.Server or transport.TLS or transport.disconnecting
            or transport.connected != 1 or backlog(transport)):
        return False
    try:
        sent = transport.getHandle().send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        return False  # let the transport meet the error and close as it does
    if sent < len(data):
        transport.write(data[sent:])
    return True


def release_buffers(transport: Any) -> None:
    """Let go of the unsent bytes of a closed transport now.

    A protocol and its transport refer to each other, so after the
    connection closes both wait for a full garbage collection, and so do the
    bytes a client never read (up to the backlog limits: 512 KiB for a
    WebSocket, 64 KiB and more for HTTP and Modbus). After a flood of such
    clients that kept the process 15 MiB above its baseline for minutes
    (bench/attacks.py). A connected transport is left alone.
    """
    if transport is None or getattr(transport, "connected", False):
        return
    if hasattr(transport, "dataBuffer"):
        transport.dataBuffer = b""
        transport.offset = 0
    if hasattr(transport, "_tempDataBuffer"):
        transport._tempDataBuffer = []
        transport._tempDataLen = 0
