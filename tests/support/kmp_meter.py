"""A fake Kamstrup MULTICAL on the device side of a pty: it reads KMP requests
and answers them as the meter would, echoing each request first as the
half-duplex optical line does."""

from __future__ import annotations

from decimal import Decimal

from twisted.internet.defer import Deferred

from meteremu.sources.kamstrup import kmp
from tests.support.p1 import PtyMaster


class FakeMultical:
    def __init__(self, pty: PtyMaster, registers: dict[int, tuple[int, Decimal | str]],
                 serial: int = 12345678, echo: bool = True) -> None:
        self.pty = pty
        self.registers = registers
        self.serial = serial
        self.echo = echo
        self.reader = kmp.FrameReader(start=kmp.START_TO_METER)
        self.requests: list[kmp.Frame] = []
        self.raw_requests: list[bytes] = []
        self._waiting: list[Deferred[kmp.Frame]] = []
        self.silent = 0  # ignore this many requests
        self.corrupt = 0  # answer this many with a bad CRC
        pty.on_data = self.data

    def data(self, data: bytes) -> None:
        for frame in self.reader.feed(data):
            self.raw_requests.append(frame)
            request = kmp.decode_frame(frame, start=kmp.START_TO_METER)
            self.requests.append(request)
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(request)
            if self.silent:
                self.silent -= 1
                continue
            reply = self.answer(request)
            if self.corrupt:
                self.corrupt -= 1
                reply = reply[:-3] + bytes(((reply[-3] ^ 0x01) or 0x02,)) + reply[-2:]
            self.pty.write((frame if self.echo else b"") + reply)

    def next_request(self) -> Deferred[kmp.Frame]:
        d: Deferred[kmp.Frame] = Deferred()
        self._waiting.append(d)
        return d

    def answer(self, request: kmp.Frame) -> bytes:
        if request.cid == kmp.CID_GET_REGISTER:
            count = request.data[0]
            ids = [int.from_bytes(request.data[1 + 2 * i:3 + 2 * i], "big") for i in range(count)]
            data = kmp.encode_registers([(i, *self.registers[i]) for i in ids if i in self.registers])
        elif request.cid == kmp.CID_GET_SERIAL:
            data = self.serial.to_bytes(4, "big")
        else:
            data = b""
        return kmp.encode_frame(bytes((request.address, request.cid)) + data, kmp.START_FROM_METER)
