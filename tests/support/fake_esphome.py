"""A fake ESPHome device on 127.0.0.1: the native API server over a real TCP socket.

It speaks what a device speaks (:mod:`tests.support.esphome_wire` holds the
framing and the Noise responder): hello, the legacy password
(``AuthenticationRequest``: wrong → ``invalid_password`` and close), device
info, the entity list (``ListEntitiesSensorResponse`` per sensor, then
``ListEntitiesDoneResponse``), states on subscription (each sensor's current
value; ``NaN`` with ``missing_state`` when it has none) and on every
:meth:`FakeEsphomeDevice.publish`, pings, and a clean disconnect. It never
connects anywhere; it only listens on loopback.

Faults for the tests: :meth:`drop` (every connection aborted), :meth:`close`
(closed after what was written), :meth:`goodbye` (the DisconnectRequest of a
device about to reboot), :meth:`garbage` (raw bytes on every connection),
``pong = False`` (pings unanswered: a silently dead device), ``refuse = True``
(connections closed at once), ``mute = True`` (connections accepted, nothing
answered: a hung device), and what a wrong key or password does on a real
device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aioesphomeapi import api_pb2
from google.protobuf.message import Message
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from tests.support.esphome_wire import NoiseWire, PlainWire, WireError, decode

KEY = "px7tsbK3C7bpXHr2OevEV2ZMg/FrNBw2+O2pNPbedtA="  # ESPHome's documentation example key
OTHER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
API_VERSION = (1, 13)  # object_id is sent; from 1.14 on a device may leave it out (clients compute it)


@dataclass
class FakeSensor:
    key: int
    object_id: str
    name: str
    unit: str = "W"
    state: float | None = None
    device_class: str = "power"
    silent: bool = False  # sends no state on subscription (a sensor that never published)


class DeviceConnection(Protocol):
    """One client of the fake device."""

    factory: FakeEsphomeDevice

    def connectionMade(self) -> None:
        device = self.factory
        self.wire: NoiseWire | PlainWire = (NoiseWire(device.key, device.name, device.mac) if device.key
                                            else PlainWire())
        self.subscribed = False
        self.messages: list[str] = []
        device.connections.append(self)
        device.connects += 1
        if device.refuse:
            self.transport.abortConnection()
            return
        device.fire("connected", self)

    def dataReceived(self, data: bytes) -> None:
        if self.factory.mute:
            return
        try:
            for msg_type, payload in self.wire.feed(data):
                self._flush_handshake()
                message = decode(msg_type, payload)
                if message is not None:
                    self.messages.append(type(message).__name__)
                    self.handle(message)
            self._flush_handshake()
        except WireError as exc:
            self._flush_handshake()
            self.factory.wire_errors.append(str(exc))
            self.transport.loseConnection()
        except Exception as exc:  # a protobuf that does not parse
            self.factory.wire_errors.append(f"{type(exc).__name__}: {exc}")
            self.transport.loseConnection()

    def _flush_handshake(self) -> None:
        pending = self.wire.take_pending()
        if pending:
            self.transport.write(pending)

    def send(self, *messages: Message) -> None:
        self.transport.write(b"".join(self.wire.frame(m) for m in messages))

    def handle(self, message: Message) -> None:
        device = self.factory
        if isinstance(message, api_pb2.HelloRequest):
            device.client_infos.append(message.client_info)
            self.send(api_pb2.HelloResponse(api_version_major=device.api_version[0],
                                            api_version_minor=device.api_version[1],
                                            server_info=f"{device.name} (fake ESPHome 2025.12.0)",
                                            name=device.name))
        elif isinstance(message, api_pb2.AuthenticationRequest):
            if device.password is not None and message.password != device.password:
                self.send(api_pb2.AuthenticationResponse(invalid_password=True))
                self.transport.loseConnection()
        elif isinstance(message, api_pb2.DeviceInfoRequest):
            self.send(api_pb2.DeviceInfoResponse(
                uses_password=device.password is not None, name=device.name, mac_address=device.mac,
                esphome_version="2025.12.0", compilation_time="Dec  1 2025, 12:00:00", model="esp32dev",
                friendly_name=device.name.replace("-", " ").title(),
                api_encryption_supported=device.key is not None))
        elif isinstance(message, api_pb2.ListEntitiesRequest):
            self.send(*[api_pb2.ListEntitiesSensorResponse(
                object_id=s.object_id if device.object_ids else "", key=s.key, name=s.name, unit_of_measurement=s.unit,
                accuracy_decimals=1, device_class=s.device_class, state_class=1) for s in device.sensors],
                api_pb2.ListEntitiesSwitchResponse(object_id="relay", key=999, name="Relay"),
                api_pb2.ListEntitiesDoneResponse())
        elif isinstance(message, api_pb2.SubscribeStatesRequest):
            self.subscribed = True
            self.send(*[device.state_message(s) for s in device.sensors if not s.silent],
                      api_pb2.SwitchStateResponse(key=999, state=True))
            device.fire("subscribed", self)
        elif isinstance(message, api_pb2.PingRequest):
            if device.pong:
                self.send(api_pb2.PingResponse())
        elif isinstance(message, api_pb2.DisconnectRequest):
            self.send(api_pb2.DisconnectResponse())
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        device = self.factory
        if self in device.connections:
            device.connections.remove(self)
        device.fire("lost", self)


class FakeEsphomeDevice(Factory):
    """The device: its sensors, its key/password, its connections (see the module docstring)."""

    protocol = DeviceConnection

    def __init__(self, sensors: list[FakeSensor], key: str | None = KEY, password: str | None = None,
                 name: str = "energy-meter", mac: str = "AC:67:B2:11:22:33",
                 api_version: tuple[int, int] = API_VERSION, object_ids: bool = True) -> None:
        self.sensors = sensors
        self.api_version, self.object_ids = api_version, object_ids
        self.key, self.password, self.name, self.mac = key, password, name, mac
        self.connections: list[DeviceConnection] = []
        self.connects = 0
        self.client_infos: list[str] = []
        self.wire_errors: list[str] = []
        self.pong = True
        self.refuse = False
        self.mute = False  # accepts connections, never answers (a hung device)
        self.port: Any = None
        self._waiters: list[tuple[str, Deferred[Any]]] = []

    # -- running -----------------------------------------------------------------------------
    def listen(self, port: int = 0) -> int:
        self.port = reactor.listenTCP(port, self, interface="127.0.0.1")
        return int(self.port.getHost().port)

    def stop(self) -> Deferred[Any]:
        for conn in list(self.connections):
            conn.transport.abortConnection()
        return self.port.stopListening()

    def when(self, event: str) -> Deferred[Any]:
        """Fires at the next ``connected`` (a connection accepted), ``subscribed`` (a client subscribed
        to states) or ``lost`` (a connection closed)."""
        d: Deferred[Any] = Deferred()
        self._waiters.append((event, d))
        return d

    def fire(self, event: str, value: Any) -> None:
        fire = [d for e, d in self._waiters if e == event]
        self._waiters = [(e, d) for e, d in self._waiters if e != event]
        for d in fire:
            reactor.callLater(0, d.callback, value)

    # -- the device's side -----------------------------------------------------------------------
    def sensor(self, object_id: str) -> FakeSensor:
        return next(s for s in self.sensors if s.object_id == object_id)

    @staticmethod
    def state_message(sensor: FakeSensor) -> api_pb2.SensorStateResponse:
        if sensor.state is None or math.isnan(sensor.state):
            return api_pb2.SensorStateResponse(key=sensor.key, state=math.nan, missing_state=True)
        return api_pb2.SensorStateResponse(key=sensor.key, state=sensor.state)

    def publish(self, **states: float | None) -> None:
        """New states (by object_id; None: no value) to every subscribed client, in one write each."""
        changed = []
        for object_id, value in states.items():
            sensor = self.sensor(object_id)
            sensor.state = value
            changed.append(sensor)
        for conn in self.connections:
            if conn.subscribed:
                conn.send(*[self.state_message(s) for s in changed])

    def send(self, *messages: Message) -> None:
        """Any messages to every subscribed client (states of other entity types, say)."""
        for conn in self.connections:
            if conn.subscribed:
                conn.send(*messages)

    def drop(self) -> None:
        for conn in list(self.connections):
            conn.transport.abortConnection()

    def goodbye(self) -> None:
        """What a device does before it reboots: a DisconnectRequest to every client."""
        for conn in self.connections:
            conn.send(api_pb2.DisconnectRequest())

    def close(self) -> None:
        """Close every connection after what was written is sent (``drop`` discards it)."""
        for conn in list(self.connections):
            conn.transport.loseConnection()

    def garbage(self, data: bytes) -> None:
        for conn in self.connections:
            conn.transport.write(data)


def three_phase(voltages: bool = False) -> list[FakeSensor]:
    """A typical ESPHome three-phase reader: per phase power in W, a kWh counter."""
    sensors = [FakeSensor(1, "power_l1", "Power L1", "W", 1200.5), FakeSensor(2, "power_l2", "Power L2", "W", -250.0),
               FakeSensor(3, "power_l3", "Power L3", "kW", 0.3),
               FakeSensor(4, "energy_import", "Energy Import", "kWh", 12345.6, "energy"),
               FakeSensor(5, "energy_export", "Energy Export", "Wh", 789250.0, "energy")]
    if voltages:
        sensors += [FakeSensor(6, "voltage_l1", "Voltage L1", "V", 230.1, "voltage"),
                    FakeSensor(7, "current_l1", "Current L1", "A", 5.5, "current")]
    return sensors
