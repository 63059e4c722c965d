"""The test peer itself, checked with the real client: aioesphomeapi's APIClient against
:class:`tests.support.fake_esphome.FakeEsphomeDevice` over TCP on loopback.

If these pass, the fake speaks ESPHome's native API as aioesphomeapi
understands it (the Noise handshake, the encrypted framing, plaintext, the
messages): the esphome source's tests rest on that.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meteremu.asyncbridge import as_deferred
from tests.support import asyncio_reactor_skip
from tests.support.esphome_wire import (
    CLASS_OF,
    TYPE_OF,
    NoiseWire,
    PlainWire,
    WireError,
    read_varint,
    varint,
)
from tests.support.fake_esphome import KEY, OTHER_KEY, FakeEsphomeDevice, FakeSensor, three_phase


class WireTests(SynchronousTestCase):
    def test_message_types_are_the_protos_ids(self) -> None:
        names = {n: CLASS_OF[n].__name__ for n in (1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 16, 19, 20, 25)}
        self.assertEqual(names, {1: "HelloRequest", 2: "HelloResponse", 3: "AuthenticationRequest",
                                 4: "AuthenticationResponse", 5: "DisconnectRequest", 7: "PingRequest",
                                 8: "PingResponse", 9: "DeviceInfoRequest", 10: "DeviceInfoResponse",
                                 11: "ListEntitiesRequest", 16: "ListEntitiesSensorResponse",
                                 19: "ListEntitiesDoneResponse", 20: "SubscribeStatesRequest",
                                 25: "SensorStateResponse"})
        self.assertEqual(len(TYPE_OF), len(CLASS_OF))

    def test_varints(self) -> None:
        for value in (0, 1, 127, 128, 300, 16384, 2**28):
            self.assertEqual(read_varint(varint(value), 0), (value, len(varint(value))))
        self.assertIsNone(read_varint(b"\x80", 0))

    def test_plain_frames_split_anywhere(self) -> None:
        from aioesphomeapi import api_pb2

        data = PlainWire().frame(api_pb2.HelloRequest(client_info="x" * 200)) + \
            PlainWire().frame(api_pb2.PingRequest())
        wire = PlainWire()
        got = []
        for i in range(len(data)):
            got += list(wire.feed(data[i:i + 1]))
        self.assertEqual([t for t, _ in got], [1, 7])

    def test_noise_garbage_preamble_is_an_error(self) -> None:
        wire = NoiseWire(KEY, "d", "m")
        with self.assertRaises(WireError):
            list(wire.feed(b"\x00\x01\x02"))


class RealClientTests(TestCase):
    """aioesphomeapi's APIClient connects, lists, subscribes and hears pushes."""

    timeout = 30
    skip = asyncio_reactor_skip()

    def serve(self, **kw: Any) -> tuple[FakeEsphomeDevice, int]:
        device = FakeEsphomeDevice(three_phase(), **kw)
        port = device.listen()
        self.addCleanup(device.stop)
        return device, port

    @inlineCallbacks
    def test_encrypted_session(self):
        device, port = self.serve()

        async def session() -> dict[str, Any]:
            from aioesphomeapi import APIClient, SensorInfo, SensorState

            client = APIClient("127.0.0.1", port, None, noise_psk=KEY, client_info="meteremu-test")
            await client.connect(login=False)
            info, entities, _ = await client.device_info_and_list_entities()
            states: list[Any] = []
            more = asyncio.get_running_loop().create_future()

            def on_state(state: Any) -> None:
                if isinstance(state, SensorState):
                    states.append((state.key, state.state, state.missing_state))
                    if len(states) == 7 and not more.done():
                        more.set_result(None)

            client.subscribe_states(on_state)
            while device.connections == [] or not device.connections[0].subscribed:
                await asyncio.sleep(0.01)
            device.publish(power_l1=99.5, power_l2=None)
            await asyncio.wait_for(more, 10)
            api = client.api_version
            await client.disconnect()
            return {"name": info.name, "mac": info.mac_address, "version": info.esphome_version,
                    "sensors": [(e.object_id, e.name, e.unit_of_measurement) for e in entities
                                if isinstance(e, SensorInfo)],
                    "states": states, "api": (api.major, api.minor)}

        got = yield as_deferred(session())
        self.assertEqual(got["name"], "energy-meter")
        self.assertEqual(got["mac"], "AC:67:B2:11:22:33")
        self.assertEqual(got["api"], (1, 13))
        self.assertEqual(got["sensors"][:3], [("power_l1", "Power L1", "W"), ("power_l2", "Power L2", "W"),
                                              ("power_l3", "Power L3", "kW")])
        first = got["states"][:5]
        self.assertEqual([k for k, _, _ in first], [1, 2, 3, 4, 5])
        self.assertAlmostEqual(first[0][1], 1200.5, places=3)
        self.assertEqual(got["states"][5], (1, 99.5, False))
        key, value, missing = got["states"][6]
        self.assertEqual(key, 2)
        self.assertTrue(missing and math.isnan(value))
        self.assertIn("meteremu-test", device.client_infos)
        self.assertEqual(device.wire_errors, [])

    @inlineCallbacks
    def test_wrong_key_is_what_the_client_calls_an_invalid_key(self) -> None:
        _, port = self.serve()

        async def attempt() -> BaseException:
            from aioesphomeapi import APIClient

            client = APIClient("127.0.0.1", port, None, noise_psk=OTHER_KEY)
            try:
                await client.connect(login=False)
            except Exception as exc:
                return exc
            raise AssertionError("connected with the wrong key")

        exc = yield as_deferred(attempt())
        self.assertEqual(type(exc).__name__, "InvalidEncryptionKeyAPIError")
        self.assertEqual(exc.received_name, "energy-meter")

    @inlineCallbacks
    def test_plaintext_device_and_password(self) -> None:
        device, port = self.serve(key=None, password="secret-pw")

        async def attempt(password: str, key: str | None) -> str:
            from aioesphomeapi import APIClient

            client = APIClient("127.0.0.1", port, password, noise_psk=key)
            try:
                await client.connect(login=True)
                await client.device_info()
                await client.disconnect()
            except Exception as exc:
                return type(exc).__name__
            return "ok"

        self.assertEqual((yield as_deferred(attempt("secret-pw", None))), "ok")
        self.assertEqual((yield as_deferred(attempt("wrong", None))), "InvalidAuthAPIError")
        self.assertEqual((yield as_deferred(attempt("secret-pw", KEY))), "EncryptionPlaintextAPIError")


class FakeSensorTests(SynchronousTestCase):
    def test_missing_state_is_nan(self) -> None:
        message = FakeEsphomeDevice.state_message(FakeSensor(1, "p", "P", state=None))
        self.assertTrue(message.missing_state and math.isnan(message.state))
