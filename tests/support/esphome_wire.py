"""ESPHome's native API on the device's side of the wire, as pure byte-in/byte-out parts.

No sockets, no reactor: :mod:`tests.support.fake_esphome` moves the bytes.
Protocol facts (read from aioesphomeapi's ``_frame_helper`` and ``api.proto``,
the code here is our own):

* **Plaintext** frames: ``0x00``, varint payload length, varint message type,
  protobuf payload.
* **Noise** frames: ``0x01``, 2-byte big-endian length, body. The client opens
  with an empty frame (its hello) and a frame ``0x00`` + the first
  Noise_NNpsk0_25519_ChaChaPoly_SHA256 handshake message (prologue
  ``NoiseAPIInit\\0\\0``, the PSK being the device's 32-byte key). The device
  answers a hello frame ``0x01`` (the protocol it chose) + name ``\\0`` + MAC
  ``\\0``, then ``0x00`` + its handshake message, or ``0x01`` + an
  explanation ("Handshake MAC failure": a wrong key) and closes. After the
  handshake every frame body is encrypted: type (2 bytes), length (2 bytes),
  payload.
* Message types are the ``id`` option of each message in ``api.proto``,
  read here from aioesphomeapi's compiled descriptors (:data:`TYPE_OF`).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

from aioesphomeapi import api_options_pb2, api_pb2
from cryptography.exceptions import InvalidTag
from google.protobuf.message import Message
from noise.connection import NoiseConnection

NOISE_NAME = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
PROLOGUE = b"NoiseAPIInit\x00\x00"
MAC_FAILURE = b"Handshake MAC failure"
MAX_FRAME = 0xFFFF


def _message_ids() -> dict[int, type[Message]]:
    out: dict[int, type[Message]] = {}
    for name in api_pb2.DESCRIPTOR.message_types_by_name:
        cls = getattr(api_pb2, name)
        options = cls.DESCRIPTOR.GetOptions()
        if options.HasExtension(api_options_pb2.id):
            out[options.Extensions[api_options_pb2.id]] = cls
    return out


CLASS_OF: dict[int, type[Message]] = _message_ids()
TYPE_OF: dict[type[Message], int] = {cls: number for number, cls in CLASS_OF.items()}


class WireError(Exception):
    """The client sent something a device would close the connection for."""


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """``(value, next position)``, or None when ``data`` ends inside the varint."""
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 35:
            raise WireError("varint too long")
    return None


def decode(msg_type: int, payload: bytes) -> Message | None:
    cls = CLASS_OF.get(msg_type)
    if cls is None:
        return None
    message = cls()
    message.ParseFromString(payload)
    return message


def encode(message: Message) -> tuple[int, bytes]:
    return TYPE_OF[type(message)], message.SerializeToString()


class PlainWire:
    """The plaintext framing (a device without ``api: encryption``)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.pending = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self._buffer += data
        while self._buffer:
            if self._buffer[0] != 0x00:
                # What ESPHome's plaintext helper answers an unknown indicator (a Noise client's
                # hello): a 0x00-led text, so that the client knows the device is plaintext.
                self.pending += b"\x00Bad indicator byte"
                raise WireError(f"bad preamble {self._buffer[0]:#04x}")
            size = read_varint(self._buffer, 1)
            if size is None:
                return
            kind = read_varint(self._buffer, size[1])
            if kind is None:
                return
            end = kind[1] + size[0]
            if len(self._buffer) < end:
                return
            payload = bytes(self._buffer[kind[1]:end])
            del self._buffer[:end]
            yield kind[0], payload

    def frame(self, message: Message) -> bytes:
        msg_type, payload = encode(message)
        return b"\x00" + varint(len(payload)) + varint(msg_type) + payload

    def take_pending(self) -> bytes:
        out, self.pending = bytes(self.pending), bytearray()
        return out


class NoiseWire:
    """The responder of ESPHome's Noise framing (a device with ``api: encryption: key:``).

    :meth:`feed` yields ``(type, payload)`` of every complete decrypted
    message; handshake replies are queued in :attr:`pending` (send them after
    each feed). A wrong key queues the device's "Handshake MAC failure" frame
    and raises :class:`WireError`.
    """

    def __init__(self, psk: str, name: str, mac: str) -> None:
        self.psk = base64.b64decode(psk)
        self.name, self.mac = name, mac
        self._buffer = bytearray()
        self.stage = "hello"
        self.pending = bytearray()
        self._noise = NoiseConnection.from_name(NOISE_NAME)
        self._noise.set_as_responder()
        self._noise.set_psks(self.psk)
        self._noise.set_prologue(PROLOGUE)
        self._noise.start_handshake()

    @staticmethod
    def _frame(body: bytes) -> bytes:
        if len(body) > MAX_FRAME:
            raise WireError("frame too long")
        return b"\x01" + len(body).to_bytes(2, "big") + body

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self._buffer += data
        while len(self._buffer) >= 3:
            if self._buffer[0] != 0x01:
                # ESPHome's explicit handshake reject: a plaintext client sees the 0x01 and
                # knows the device wants encryption.
                self.pending += self._frame(b"\x01Bad indicator byte")
                raise WireError(f"bad preamble {self._buffer[0]:#04x}")
            size = int.from_bytes(self._buffer[1:3], "big")
            if len(self._buffer) < 3 + size:
                return
            body = bytes(self._buffer[3:3 + size])
            del self._buffer[:3 + size]
            if self.stage == "hello":
                self.stage = "handshake"  # the client's hello is empty (room for future extensions)
                self.pending += self._frame(b"\x01" + self.name.encode() + b"\x00" + self.mac.encode() + b"\x00")
            elif self.stage == "handshake":
                self._handshake(body)
            else:
                yield self._open(body)

    def _handshake(self, body: bytes) -> None:
        if not body or body[0] != 0x00:
            raise WireError("handshake frame without the 0x00 prefix")
        try:
            self._noise.read_message(body[1:])
        except InvalidTag:
            self.pending += self._frame(b"\x01" + MAC_FAILURE)
            self.stage = "closed"
            raise WireError("the client's key does not match (Handshake MAC failure)") from None
        self.pending += self._frame(b"\x00" + self._noise.write_message())
        self.stage = "ready"

    def _open(self, body: bytes) -> tuple[int, bytes]:
        try:
            plain = self._noise.decrypt(body)
        except InvalidTag:
            raise WireError("a frame failed to decrypt") from None
        if len(plain) < 4:
            raise WireError("decrypted frame too short")
        return int.from_bytes(plain[0:2], "big"), plain[4:]

    def frame(self, message: Message) -> bytes:
        msg_type, payload = encode(message)
        inner = msg_type.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload
        return self._frame(self._noise.encrypt(inner))

    def take_pending(self) -> bytes:
        out, self.pending = bytes(self.pending), bytearray()
        return out
