"""The other side of the SMA Energy Meter face: pysma-plus' Speedwire decoder.

``decode`` runs pysma-plus' own ``SMAspeedwireEM.datagram_received`` on a
datagram. Its constructor only wants an event loop for the socket it opens
in ``new_session``; here no socket is needed, so the decoder is made inside a
coroutine on the running (reactor's) loop, or, outside one, without calling
the constructor and with only the state the parser itself reads.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pysmaplus.device_em import Debug_information_em, SMAspeedwireEM


def decoder() -> SMAspeedwireEM:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        parser = SMAspeedwireEM.__new__(SMAspeedwireEM)
        parser.di = Debug_information_em()
        parser._data_received = None
        parser._expected_device = None
        return parser
    return SMAspeedwireEM()


def decode(datagram: bytes, addr: tuple[str, int] = ("192.0.2.7", 9522)) -> dict[str, Any]:
    return decoder().datagram_received(datagram, addr)
