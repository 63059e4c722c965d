"""paho-mqtt's socket hook: a paho ``Client`` that uses a connection made elsewhere.

paho's ``reconnect()`` opens its network connection itself, blocking (TCP
connect, TLS handshake), in the one method it calls for that:
``Client._create_socket()``. meteremu makes the connection with Twisted
instead (:mod:`meteremu.mqttclient`) and hands paho a socket-like object over
the Twisted transport; :func:`client_class` is paho's ``Client`` with
``_create_socket()`` returning that object. If paho ever tried to open a
socket itself, it raises instead of blocking the reactor.

Private names used: ``paho.mqtt.client.Client._create_socket`` (overridden:
no argument but ``self``, returns the object paho then uses as its socket,
calling ``setblocking(False)``, ``recv(n)``, ``send(data)`` and ``close()``
on it). Checked with paho-mqtt 2.2.0 (``setup.cfg`` pins ``>=2.2,<3``);
``tests/integration/test_compat_sources.py`` checks it on every run.
"""

from __future__ import annotations

from typing import Any

_client_class: type | None = None


def client_class() -> type:
    """paho's ``Client``, taught to use the socket-like object in its ``handed`` attribute.

    ``reconnect()`` takes ``handed`` (and clears it); with nothing handed it
    raises ``ConnectionError``. Created on first use: importing this module
    does not import paho.
    """
    global _client_class
    if _client_class is None:
        import paho.mqtt.client as mqtt

        if not hasattr(mqtt.Client, "_create_socket"):  # pragma: no cover - guarded by the pin and the test
            raise RuntimeError("meteremu needs paho-mqtt >= 2.2, < 3 (Client._create_socket is missing)")

        class _HandedSocketClient(mqtt.Client):
            handed: Any = None

            def _create_socket(self) -> Any:
                sock, self.handed = self.handed, None
                if sock is None:
                    raise ConnectionError("no connected socket was handed over (paho must not connect itself)")
                return sock

        _client_class = _HandedSocketClient
    return _client_class
