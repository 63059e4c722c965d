"""Contract tests for the private names the client side relies on (``meteremu/compat/paho.py``).

Each test fails with a message that says what an upgrade changed and where
meteremu depends on it, instead of letting the service break at run time.
paho runs for real over a real socket pair: one end handed to paho, the
other acting as the broker.
"""

from __future__ import annotations

import inspect
import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meteremu.compat.paho import client_class

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


class _SocketLike:
    """Exactly the socket methods meteremu's adapter offers paho (``mqttclient._BrokerConnection``),
    over a real socket: paho calling anything else is an AttributeError here."""

    __slots__ = ("_sock", "calls")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.calls: set[str] = set()

    def setblocking(self, flag: bool) -> None:
        self.calls.add("setblocking")
        self._sock.setblocking(flag)

    def recv(self, size: int) -> bytes:
        self.calls.add("recv")
        return self._sock.recv(size)

    def send(self, data: bytes | bytearray) -> int:
        self.calls.add("send")
        return self._sock.send(data)

    def close(self) -> None:
        self.calls.add("close")
        self._sock.close()


class PahoSocketHookTests(SynchronousTestCase):
    def setUp(self) -> None:
        import paho.mqtt.client as mqtt

        self.mqtt = mqtt
        self.version = getattr(__import__("paho.mqtt", fromlist=["__version__"]), "__version__", "?")

    def client(self) -> Any:
        client = client_class()(self.mqtt.CallbackAPIVersion.VERSION2, client_id="contract",
                                protocol=self.mqtt.MQTTv311, reconnect_on_failure=False)
        client.connect_async("broker.invalid", 1883, keepalive=60)
        return client

    def test_paho_is_the_supported_major_version(self) -> None:
        self.assertTrue(self.version.startswith("2."),
                        f"paho-mqtt {self.version}: meteremu/compat/paho.py was checked with 2.2 "
                        "(setup.cfg pins >=2.2,<3); check its socket hook before widening the pin")

    def test_create_socket_is_still_the_one_hook(self) -> None:
        hook = getattr(self.mqtt.Client, "_create_socket", None)
        self.assertIsNotNone(hook, f"paho-mqtt {self.version} has no Client._create_socket: "
                                   "meteremu/compat/paho.py cannot hand paho a connection")
        self.assertEqual(list(inspect.signature(hook).parameters), ["self"],
                         f"paho-mqtt {self.version} changed Client._create_socket's signature "
                         "(meteremu/compat/paho.py overrides it)")
        self.assertIn("_create_socket", inspect.getsource(self.mqtt.Client.reconnect),
                      f"paho-mqtt {self.version}: reconnect() no longer calls _create_socket")

    def test_paho_speaks_mqtt_over_the_handed_object_only(self) -> None:
        mine, broker = socket.socketpair()
        self.addCleanup(broker.close)
        handed = _SocketLike(mine)
        client = self.client()
        connected: list[Any] = []
        client.on_connect = lambda c, u, flags, reason, props: connected.append(reason)
        client.handed = handed
        self.assertEqual(client.reconnect(), self.mqtt.MQTT_ERR_SUCCESS)
        self.assertIs(client.socket(), handed, "paho does not use the handed object as its socket")
        client.loop_write()
        packet = broker.recv(1024)
        self.assertEqual(packet[:1], b"\x10", f"no CONNECT through the handed object: {packet!r}")
        broker.sendall(CONNACK_ACCEPTED)
        client.loop_read()
        self.assertEqual([r.is_failure for r in connected], [False])
        client.disconnect()
        client.loop_write()
        self.assertIsNone(client.socket())
        self.assertLessEqual(handed.calls, {"setblocking", "recv", "send", "close"})
        self.assertIn("close", handed.calls, "paho did not close the handed object on disconnect")

    def test_without_a_handed_socket_paho_never_connects_itself(self) -> None:
        client = self.client()
        with self.assertRaises(ConnectionError):
            client.reconnect()  # would block in socket.create_connection without the override
        self.assertIsNone(client.socket())
