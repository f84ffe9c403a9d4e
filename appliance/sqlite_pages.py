"""The rows on an SQLite file's table-leaf pages, read without SQLite (for salvage).

When the pages above them are lost (a truncated or corrupt file), SQLite cannot reach the
leaves that survived; this reads every page that looks like a table leaf, cell by cell,
following overflow chains, and decodes each record. Nothing here trusts the bytes: every
length is bounds-checked and a cell that does not decode is skipped.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE_LEAF = 0x0D
MAGIC = b"SQLite format 3\0"


@dataclass(frozen=True)
class LeafRow:
    page: int
    rowid: int
    values: tuple[Any, ...]


def _varint(buf: bytes | mmap.mmap, i: int, end: int) -> tuple[int, int]:
    value = 0
    for k in range(8):
        if i + k >= end:
            raise ValueError("varint past the end")
        b = buf[i + k]
        value = (value << 7) | (b & 0x7F)
        if b < 0x80:
            return value, i + k + 1
    if i + 8 >= end:
        raise ValueError("varint past the end")
    return (value << 8) | buf[i + 8], i + 9


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def record_types(payload: bytes) -> tuple[int, list[int]]:
    """A record's header: where its values start, and their serial types."""
    header_len, i = _varint(payload, 0, len(payload))
    if not 1 <= header_len <= len(payload):
        raise ValueError("bad record header")
    types = []
    while i < header_len:
        t, i = _varint(payload, i, header_len)
        types.append(t)
    return header_len, types


def decode_record(payload: bytes, header: tuple[int, list[int]] | None = None) -> tuple[Any, ...]:
    """The values of one record (SQLite's record format); ValueError when it does not decode."""
    header_len, types = header or record_types(payload)
    pos = header_len
    values: list[Any] = []
    for t in types:
        if t == 0:
            values.append(None)
            continue
        if t in _INT_SIZES:
            n = _INT_SIZES[t]
            values.append(int.from_bytes(payload[pos:pos + n], "big", signed=True))
        elif t == 7:
            n = 8
            values.append(struct.unpack(">d", payload[pos:pos + 8])[0] if pos + 8 <= len(payload) else None)
        elif t in (8, 9):
            n = 0
            values.append(t - 8)
        elif t >= 12:
            n = (t - 12) // 2
            raw = payload[pos:pos + n]
            values.append(raw.decode("utf-8") if t % 2 else bytes(raw))  # UnicodeDecodeError is a ValueError
        else:
            raise ValueError("reserved serial type")
        pos += n
        if pos > len(payload):
            raise ValueError("record past its payload")
    return tuple(values)


Wanted = Callable[[int, int], bool]  # (number of columns, rowid) -> decode this row?
WantedPage = Callable[[int, int, int], bool]  # (columns of its first row, first rowid, last rowid) -> read it?


def leaf_rows(path: str | Path, wanted: Wanted = lambda columns, rowid: True,
              wanted_page: WantedPage = lambda columns, first, last: True) -> Iterator[LeafRow]:
    """Every decodable row on every table-leaf page of the file (any table; the caller sorts them).

    `wanted_page` and `wanted` are asked before a page's or a row's values are decoded, so
    rows already known cost little.
    """
    with Path(path).open("rb") as fh:
        try:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return
        with data:
            if len(data) < 100 or data[:16] != MAGIC:
                return
            (page_size,) = struct.unpack(">H", data[16:18])
            page_size = 65536 if page_size == 1 else page_size
            if page_size < 512 or page_size & (page_size - 1):
                return
            usable = page_size - data[20]
            for number in range(1, len(data) // page_size + 1):
                yield from _page_rows(data, number, page_size, usable, wanted, wanted_page)


def _page_rows(data: mmap.mmap, number: int, page_size: int, usable: int, wanted: Wanted,
               wanted_page: WantedPage) -> Iterator[LeafRow]:
    base = (number - 1) * page_size
    head = base + (100 if number == 1 else 0)
    if data[head] != TABLE_LEAF:
        return
    (cells,) = struct.unpack(">H", data[head + 3:head + 5])
    if not 0 < cells <= (page_size - 8) // 2:
        return
    pointers = struct.unpack(f">{cells}H", data[head + 8:head + 8 + 2 * cells])
    try:
        first_rowid, first = _cell(data, base, base + pointers[0], page_size, usable)
        last_rowid, _ = _cell(data, base, base + pointers[-1], page_size, usable)
        if not wanted_page(len(record_types(first)[1]), first_rowid, last_rowid):
            return
    except (ValueError, IndexError, struct.error):
        pass  # the page is read cell by cell
    for ptr in pointers:
        if not 8 <= ptr < usable:
            continue
        try:
            rowid, payload = _cell(data, base, base + ptr, page_size, usable)
            header = record_types(payload)
            if wanted(len(header[1]), rowid):
                yield LeafRow(number, rowid, decode_record(payload, header))
        except (ValueError, IndexError, struct.error):
            continue


def _cell(data: mmap.mmap, base: int, at: int, page_size: int, usable: int) -> tuple[int, bytes]:
    end = base + usable
    size, i = _varint(data, at, end)
    rowid, i = _varint(data, i, end)
    if rowid >= 1 << 63:
        rowid -= 1 << 64
    most = usable - 35
    if size <= most:
        if i + size > end:
            raise ValueError("cell past its page")
        return rowid, bytes(data[i:i + size])
    least = ((usable - 12) * 32 // 255) - 23
    local = least + (size - least) % (usable - 4)
    if local > most:
        local = least
    if i + local + 4 > end:
        raise ValueError("cell past its page")
    parts = [bytes(data[i:i + local])]
    (next_page,) = struct.unpack(">I", data[i + local:i + local + 4])
    remaining = size - local
    pages = len(data) // page_size
    seen = set()
    while remaining > 0:
        if not 1 <= next_page <= pages or next_page in seen:
            raise ValueError("broken overflow chain")
        seen.add(next_page)
        o = (next_page - 1) * page_size
        (next_page,) = struct.unpack(">I", data[o:o + 4])
        take = min(remaining, usable - 4)
        parts.append(bytes(data[o + 4:o + 4 + take]))
        remaining -= take
    return rowid, b"".join(parts)
