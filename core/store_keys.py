"""The keys of a table store's LMDB databases (store.py has the whole layout) and the size of a chunk.

Keys are big-endian so LMDB's byte order is (table, version, chunk) order: a cursor walks one
version's chunks in row order, and a prefix scan lists a table's versions.
"""
from __future__ import annotations

import struct

MAX_CHUNK_BYTES = 16 << 20       # one LMDB value: large enough that a chunk's rows are one contiguous run


def chunk_rows_for(row_bytes: int) -> int:
    """Largest power of two of rows within 16 MiB: 65,536 rows of 256 B or 160 B, 32,768 of 264 B."""
    rows = 1
    while rows * 2 * row_bytes <= MAX_CHUNK_BYTES:
        rows *= 2
    return rows


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def manifest_key(table: str, version: int) -> bytes:
    return b"manifest/" + table.encode() + b"/" + u64(version)


def current_key(table: str) -> bytes:
    return b"current/" + table.encode()


def chunk_key(table: str, version: int, chunk: int) -> bytes:
    return table.encode() + b"\0" + u64(version) + u64(chunk)
