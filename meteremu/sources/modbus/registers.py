"""Modbus register values and read plans. Pure: no client, no socket.

A value is ``count`` 16-bit registers from one table (input or holding) at
one address, read as int16/uint16/int32/uint32/float32 with a byte order
(within each register) and a word order (of the two registers of a 32-bit
value), then multiplied by its scale. Reads are batched: the values of one
table are grouped into as few requests as the map allows (at most 125
registers each, Modbus' limit, reading through gaps of at most ``max_gap``
unused registers).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Table = Literal["input", "holding"]
DataType = Literal["int16", "uint16", "int32", "uint32", "float32"]
Order = Literal["big", "little"]

MAX_REGISTERS = 125  # per read request (Modbus application protocol, function 03/04)
WORDS: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_FORMAT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}


class RegisterProblem(ValueError):
    """A register value that cannot be a reading (NaN, a SunSpec "not implemented" marker)."""


def words(kind: str) -> int:
    return WORDS[kind]


def decode(registers: Sequence[int], kind: str, word_order: str = "big", byte_order: str = "big") -> float:
    """The value of ``registers`` (``words(kind)`` of them) as ``kind``."""
    count = WORDS[kind]
    if len(registers) != count or any(not 0 <= r <= 0xFFFF for r in registers):
        raise RegisterProblem(f"{kind} needs {count} register(s) of 16 bits; got {list(registers)}")
    ordered = list(registers) if word_order == "big" else list(reversed(registers))
    raw = b"".join(struct.pack(">H" if byte_order == "big" else "<H", r) for r in ordered)
    (value,) = struct.unpack(_FORMAT[kind], raw)
    value = float(value)
    if not math.isfinite(value):
        raise RegisterProblem(f"{kind} is not a finite number")
    return value


@dataclass(frozen=True)
class Block:
    """One read request: ``count`` registers of ``table`` from ``address``."""

    table: str
    address: int
    count: int

    def covers(self, table: str, address: int, count: int) -> bool:
        return table == self.table and self.address <= address and address + count <= self.address + self.count

    def slice(self, registers: Sequence[int], address: int, count: int) -> list[int]:
        start = address - self.address
        return list(registers[start:start + count])


def plan(spans: Iterable[tuple[str, int, int]], max_gap: int) -> list[Block]:
    """As few blocks as cover every ``(table, address, count)``, gaps of at most ``max_gap`` read through."""
    blocks: list[Block] = []
    for table in ("input", "holding"):
        wanted = sorted({(a, c) for t, a, c in spans if t == table})
        start = end = None
        for address, count in wanted:
            if start is not None and end is not None and address - end <= max_gap and \
                    max(end, address + count) - start <= MAX_REGISTERS:
                end = max(end, address + count)
                continue
            if start is not None and end is not None:
                blocks.append(Block(table, start, end - start))
            start, end = address, address + count
        if start is not None and end is not None:
            blocks.append(Block(table, start, end - start))
    return blocks


def pick(blocks: Sequence[Block], data: Sequence[Sequence[int]], table: str, address: int, count: int) -> list[int]:
    """The ``count`` registers at ``address`` out of the answers ``data`` to ``blocks``."""
    for block, registers in zip(blocks, data, strict=True):
        if block.covers(table, address, count):
            return block.slice(registers, address, count)
    raise KeyError(f"{table} register {address} is in no block")
