"""Answering a UDP datagram straight on the socket.

``twisted.internet.udp.Port.write`` checks and resolves the destination on
every call (it is written for arbitrary callers): for an answer to the
address ``recvfrom`` just gave us that is pure cost, on the hottest path of
the service (every battery polls several times a second). ``getHandle()`` is
public, but writing on the socket behind the Port's back is relying on how
Port works (no write buffer of its own, errors raised to the caller), so it
lives here. Checked with Twisted 24.7 to 26.10; ``tests/unit/test_compat.py`` and ``tests/integration/test_compat.py``
holds the contract: the handle is the bound socket, and ``sendto`` on it
delivers what ``Port.write`` would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SendTo = Callable[[bytes, tuple[str, int]], object]


def raw_sendto(transport: Any) -> SendTo | None:
    """``sendto`` of the socket behind a listening UDP transport, or None when it has none.

    Errors (``EPERM``, ``ENETUNREACH``, ``EAGAIN``) are raised as ``OSError``
    to the caller, as ``Port.write`` raises them.
    """
    handle = getattr(transport, "getHandle", None)
    if handle is None:
        return None
    sendto: SendTo = handle().sendto
    return sendto
