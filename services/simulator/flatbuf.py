"""A small FlatBuffers writer: just enough to answer Open-Meteo's `format=flatbuffers`.

The real weather client (`openmeteo_requests`, used by quartz-solar-forecast) always asks
for FlatBuffers, so the simulated weather service must speak it. The project does not
depend on the `flatbuffers` package for this: tables, strings, and vectors of scalars or
tables are laid out here by hand, front to back (a table's vtable before it, its children
after it, so every uoffset points forward as the format requires).

Field slots are the schema's field order (0, 1, ...); a reader finds field `i` at vtable
entry `4 + 2 * i`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Scalar:
    """An inline scalar: `fmt` is a `struct` code (b B h H i I q Q f d)."""

    fmt: str
    value: float | int


@dataclass(frozen=True, slots=True)
class String:
    value: str


@dataclass(frozen=True, slots=True)
class Vector:
    """A vector of scalars of one `struct` code, e.g. `f` for [float], `q` for [int64]."""

    fmt: str
    values: Sequence[float | int]


@dataclass(frozen=True, slots=True)
class Table:
    """A table: (slot, value) pairs; absent slots read as the schema's default."""

    fields: list[tuple[int, Field]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TableVector:
    tables: Sequence[Table]


Field = Scalar | String | Vector | Table | TableVector


class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def pad_to(self, alignment: int, extra: int = 0) -> None:
        """Pad so that the position plus `extra` is a multiple of `alignment`."""
        while (len(self.buf) + extra) % alignment:
            self.buf.append(0)

    def table(self, t: Table) -> int:
        slots = [slot for slot, _ in t.fields]
        if len(set(slots)) != len(slots) or any(s < 0 for s in slots):
            raise ValueError(f"table slots must be distinct and >= 0: {slots}")
        sized = [
            (slot, struct.calcsize("<" + f.fmt) if isinstance(f, Scalar) else 4, f)
            for slot, f in t.fields
        ]
        sized.sort(key=lambda item: -item[1])  # largest first: no padding between fields
        offsets: dict[int, int] = {}
        cursor = 4  # after the soffset to the vtable
        for slot, size, _ in sized:
            cursor += -cursor % size
            offsets[slot] = cursor
            cursor += size
        n_slots = max(slots, default=-1) + 1
        self.pad_to(2)
        vtable = len(self.buf)
        self.buf += struct.pack(
            f"<HH{n_slots}H", 4 + 2 * n_slots, cursor, *(offsets.get(i, 0) for i in range(n_slots))
        )
        self.pad_to(8)
        start = len(self.buf)
        self.buf += bytes(cursor)
        struct.pack_into("<i", self.buf, start, start - vtable)
        for slot, _, f in sized:
            if isinstance(f, Scalar):
                struct.pack_into("<" + f.fmt, self.buf, start + offsets[slot], f.value)
        for slot, _, f in sized:
            if not isinstance(f, Scalar):
                at = start + offsets[slot]
                struct.pack_into("<I", self.buf, at, self.child(f) - at)
        return start

    def child(self, f: Field) -> int:
        if isinstance(f, Table):
            return self.table(f)
        if isinstance(f, String):
            data = f.value.encode()
            self.pad_to(4)
            pos = len(self.buf)
            self.buf += struct.pack("<I", len(data)) + data + b"\0"
            return pos
        if isinstance(f, Vector):
            size = struct.calcsize("<" + f.fmt)
            self.pad_to(max(4, size), extra=4)  # elements aligned after the length
            pos = len(self.buf)
            self.buf += struct.pack(f"<I{len(f.values)}{f.fmt}", len(f.values), *f.values)
            return pos
        if isinstance(f, TableVector):
            self.pad_to(4)
            pos = len(self.buf)
            self.buf += struct.pack("<I", len(f.tables)) + bytes(4 * len(f.tables))
            for i, t in enumerate(f.tables):
                at = pos + 4 + 4 * i
                struct.pack_into("<I", self.buf, at, self.table(t) - at)
            return pos
        raise TypeError(f"not a FlatBuffers field: {f!r}")


def encode(root: Table, *, size_prefixed: bool = False) -> bytes:
    """One FlatBuffers message with `root` as its root table."""
    w = _Writer()
    w.buf += bytes(4)  # the root uoffset
    struct.pack_into("<I", w.buf, 0, w.table(root))
    if size_prefixed:
        return struct.pack("<I", len(w.buf)) + bytes(w.buf)
    return bytes(w.buf)
