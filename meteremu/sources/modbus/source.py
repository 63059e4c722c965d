"""The Modbus source's I/O: pymodbus' asyncio client on the reactor's loop, one request in flight.

Each poll connects when needed, reads the planned blocks one after the
other (never two requests in flight), and turns the answers into one sample
(:mod:`.parse`). The next poll is armed only when this one has ended, so a
slow device slows the polls and never piles them up; the reactor never
waits: every request is an asyncio task on its loop.

Failures: no answer within ``timeout`` (a silent device) or a lost
connection make the meter stale (three in a row: down) and the connection is
dropped and made again after a backoff; a Modbus exception answer (an
address or unit the device does not have) marks the meter down at once,
naming the register block; a value out of range refuses the sample.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from meteremu.asyncbridge import as_deferred
from meteremu.backoff import next_delay
from meteremu.clocks import wall
from meteremu.interfaces import IReactor
from meteremu.meter import Meter
from meteremu.sources.common import SourceStatus
from meteremu.sources.modbus.options import ModbusOptions
from meteremu.sources.modbus.parse import RegisterMap, ValueRefused
from meteremu.sources.modbus.presets import PRESETS
from meteremu.sources.modbus.registers import Block

DOWN_AFTER = 3  # failed polls in a row


class ExceptionAnswer(Exception):
    """The device answered a read with a Modbus exception."""


class NoAnswer(Exception):
    """No (usable) answer: silence, a lost connection, a short answer."""


def static_map(options: ModbusOptions) -> RegisterMap | None:
    if options.values is not None:
        return RegisterMap(tuple(options.values.items()), options.max_gap)
    if options.preset in PRESETS:
        return RegisterMap(tuple((key, 0, r) for key, r in PRESETS[options.preset].items()), options.max_gap)
    return None


class ModbusSource(SourceStatus, Service):
    type_name = "modbus"

    def __init__(self, meter: Meter, options: ModbusOptions, reactor: IReactor, clock: Any = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.meter, self.options, self.reactor = meter, options, reactor
        self.clock = clock or reactor
        self.rng = rng
        self.map = static_map(options)
        self.client: Any = None
        self.state = "stopped"
        self._said: dict[str, str] = {}
        self._timer: IDelayedCall | None = None
        self._stopping = False
        self._busy: Deferred[Any] | None = None
        self.failures_in_row = 0
        self.polls = 0
        self.samples = 0
        host, port = options.address()
        self.meter.details = {"address": f"{host}:{port}", "framer": options.framer, "unit": options.unit,
                              "preset": options.preset, "connection": self.state}
        if self.map is not None:
            self.meter.details["registers"] = self.map.describe()

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._set_state("connecting")
        self._call_later(0, self._poll)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stop_running("_timer")
        self._close()
        busy, self._busy = self._busy, None
        if busy is not None:
            busy.cancel()
        return succeed(None)

    # -- one poll -----------------------------------------------------------------------------
    def _poll(self) -> None:
        if self._stopping or self._busy is not None:
            return
        self.polls += 1
        d = as_deferred(self._cycle())
        self._busy = d
        d.addCallbacks(self._answered, self._failed)
        d.addBoth(self._done, d)

    def _done(self, result: Any, d: Deferred[Any]) -> None:
        if self._busy is d:
            self._busy = None

    async def _cycle(self) -> tuple[RegisterMap, list[Block], list[list[int]]]:
        client = await self._connected()
        if self.map is None:
            from meteremu.sources.modbus.sunspec import discover

            self.map = await discover(self._read_raw, self.options)
            self.meter.details["registers"] = self.map.describe()
        blocks = self.map.blocks
        data = []
        for block in blocks:  # one request in flight
            data.append(await self._read(client, block))
        return self.map, blocks, data

    async def _connected(self) -> Any:
        if self.client is not None and self.client.connected:
            return self.client
        self._close()
        from pymodbus import FramerType
        from pymodbus.client import AsyncModbusTcpClient

        host, port = self.options.address()
        self.client = AsyncModbusTcpClient(
            host, port=port, framer=FramerType.RTU if self.options.framer == "rtu" else FramerType.SOCKET,
            timeout=self.options.timeout, retries=0, reconnect_delay=0, name=f"meteremu {self.meter.name}")
        ok = await asyncio.wait_for(self.client.connect(), self.options.timeout * 2)
        if not ok:
            raise NoAnswer(f"cannot connect to {host}:{port}")
        self._set_state("connected")
        return self.client

    async def _read_raw(self, table: str, address: int, count: int) -> list[int]:
        return await self._read(await self._connected(), Block(table, address, count))

    async def _read(self, client: Any, block: Block) -> list[int]:
        from pymodbus.exceptions import ModbusException

        read = client.read_input_registers if block.table == "input" else client.read_holding_registers
        where = f"{block.table} registers {block.address}..{block.address + block.count - 1}"
        try:
            answer = await asyncio.wait_for(read(block.address, count=block.count, device_id=self.options.unit),
                                            self.options.timeout * 2)
        except (TimeoutError, ModbusException, OSError) as exc:
            raise NoAnswer(f"{where}: no answer ({type(exc).__name__})") from None
        if answer.isError():
            code = getattr(answer, "exception_code", None)
            raise ExceptionAnswer(f"{where} of unit {self.options.unit}: Modbus exception {code}")
        registers = list(getattr(answer, "registers", []) or [])
        if len(registers) < block.count:
            raise NoAnswer(f"{where}: {len(registers)} registers in the answer")
        return registers[:block.count]

    # -- outcomes ----------------------------------------------------------------------------
    def _answered(self, result: tuple[RegisterMap, list[Block], list[list[int]]]) -> None:
        regmap, blocks, data = result
        self.failures_in_row = 0
        self._said.pop("failure", None)
        try:
            reading = regmap.reading(blocks, data, wall(self.clock), self.options.max_power, self.options.invert)
        except ValueRefused as exc:
            message = f"Modbus {self.meter.details['address']}: {exc}; sample refused"
            self._say("value", message)
            self.meter.report_failure(message, down=False)
        else:
            self._said.pop("value", None)
            self.samples += 1
            self.meter.details["samples"] = self.samples
            self.meter.update(reading)
        self._call_later(self.options.interval, self._poll)

    def _failed(self, failure: Failure) -> None:
        if self._stopping:
            return
        exc = failure.value
        if not isinstance(exc, (NoAnswer, ExceptionAnswer, ValueError, TimeoutError, OSError)):
            self._say("bug", f"Modbus poll failed: {failure.getErrorMessage()}", "error")
        self.failures_in_row += 1
        message = f"Modbus {self.meter.details['address']}: {exc or type(exc).__name__}"
        self._say("failure", message)
        # An exception answer or no SunSpec meter at the base: the device will not change its mind.
        down = isinstance(exc, (ExceptionAnswer, ValueError)) or self.failures_in_row >= DOWN_AFTER
        self.meter.report_failure(message, down=down)
        self._set_state("failing")
        self._close()
        delay = next_delay(self.failures_in_row, self.options.reconnect_min, self.options.reconnect_max, self.rng)
        self._call_later(delay, self._poll)

    def _close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()
