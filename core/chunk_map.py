"""ChunkMap: where each chunk of a table lives in LMDB's memory map, found without reading it.

py-lmdb pre-faults every page of a value it returns (it touches one byte per 4 KiB, so that page
faults happen without the GIL). For a chunk of 16 MiB that is a 16 MiB disk read, and a reader that
located a 32 GiB table's chunks with `txn.get` read the whole table before its first lookup (57 s for
4 GiB on this machine's disk; the first lookups timed out). So the store records, right after each
load commit while the chunk's pages are still in the page cache, each chunk's byte offset in the
file, a hash of its key and a fingerprint (its first and last 16 bytes) in the `pages` database. A reader then finds
the map's base address from one small value's page header and places every chunk at base + offset,
checking the fingerprint (two pages per chunk). A chunk whose entry is missing or whose fingerprint
differs (e.g. a compacted copy of the store) is located with `txn.get` as before: slower, never wrong.

LMDB page layout (0.9.x, 64-bit): a 16-byte header (pgno u64, pad u16, flags u16, lower/upper or
overflow page count u32), then the data; a large value lives in one run of overflow pages
(flags & P_OVERFLOW) and starts 16 bytes into its first page.
"""
from __future__ import annotations

import ctypes
import hashlib
import struct

import numpy as np

PAGE_HEADER = 16
P_OVERFLOW = 0x04
FINGERPRINT = 16  # bytes kept from each end of a chunk
_ENTRY = struct.Struct(">Q8s")  # file offset, blake2b-64 of the chunk's key (the entry's owner)


def _owner(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=8).digest()


def address_of(buf) -> int:
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data


def page_header(address: int, page_size: int) -> tuple[int, int]:
    """(pgno, flags) of the LMDB page holding `address`."""
    start = address - address % page_size
    pgno, _pad, flags = struct.unpack("<QHH", ctypes.string_at(start, 12))
    return pgno, flags


def entry_for(key: bytes, buf, page_size: int) -> bytes:
    """The `pages` value of chunk `key` returned by txn.get(buffers=True): file offset, owner,
    fingerprint."""
    address = address_of(buf)
    pgno, flags = page_header(address - PAGE_HEADER, page_size)
    if not flags & P_OVERFLOW or address % page_size != PAGE_HEADER:
        raise RuntimeError(f"chunk at {address:#x} is not at the start of an LMDB overflow page run")
    data = bytes(buf[:FINGERPRINT]) + bytes(buf[-FINGERPRINT:])
    return _ENTRY.pack(pgno * page_size + PAGE_HEADER, _owner(key)) + data


def map_base(txn, db, key: bytes, page_size: int) -> int:
    """The map's base address, from a small (inline) value's page: its header holds its pgno."""
    value = txn.get(key, db=db)
    address = address_of(value)
    pgno, _ = page_header(address, page_size)
    return address - address % page_size - pgno * page_size


def locate(txn, pages_db, base: int, limit: int, key: bytes, nbytes: int) -> int | None:
    """The chunk's address from its `pages` entry, or None when there is none or it does not match.
    limit: the bytes of the file in use; an offset beyond it (a stale entry) is never read."""
    entry = txn.get(key, db=pages_db) if pages_db is not None else None
    if entry is None or len(entry) != _ENTRY.size + 2 * FINGERPRINT:
        return None
    entry = bytes(entry)
    offset, owner = _ENTRY.unpack_from(entry)
    if owner != _owner(key) or offset + nbytes > limit or nbytes < FINGERPRINT:
        return None
    address = base + offset
    head, tail = entry[_ENTRY.size:_ENTRY.size + FINGERPRINT], entry[_ENTRY.size + FINGERPRINT:]
    if ctypes.string_at(address, FINGERPRINT) != head or ctypes.string_at(address + nbytes - FINGERPRINT, FINGERPRINT) != tail:
        return None
    return address
