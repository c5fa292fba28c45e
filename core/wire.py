"""LookupResponse bytes written by hand: the protobuf wire format of engram_memory.v1.LookupResponse
with the rows copied once, straight from the gathered array.

Building the message through protobuf copies the rows three times (bytes, message, serialize);
for 65,536 rows of 256 B that is ~17 ms against a ~10 ms transport floor on this machine. Here the
rows are gathered straight into the message's bytes. Any protobuf client parses these bytes as the
.proto declares (tests/memory_service/test_wire.py).
"""
from __future__ import annotations

import ctypes

import numpy as np

# field number << 3 | wire type (0: varint, 2: length-delimited)
_TABLE, _VERSION, _ROW_BYTES, _NUM_ROWS, _ROWS, _REQUEST_ID, _IN_SHM = 0x0A, 0x10, 0x18, 0x20, 0x2A, 0x30, 0x38


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_BYTES_DATA = bytes.__basicsize__ - 1  # offset of ob_sval, the data of a CPython bytes object


def new_bytes(size: int) -> tuple[bytes, np.ndarray]:
    """A new, uninitialized bytes object and a writable uint8 view of it, to fill before it is
    shared: the C API's PyBytes_FromStringAndSize(NULL, size) way of building bytes in place."""
    data = _new_bytes(None, size)
    view = np.frombuffer((ctypes.c_char * size).from_address(id(data) + _BYTES_DATA), dtype=np.uint8)
    return data, view


def lookup_response(table: str, version: int, row_bytes: int, num_rows: int, fill, request_id: int = 0,
                    rows_in_shm: bool = False) -> bytes:
    """Serialized LookupResponse; fill(uint8 [num_rows, row_bytes]) writes the rows in place, so
    they are copied once, from the table into the message (rows_in_shm: fill is None, no rows)."""
    name = table.encode()
    body = 0 if rows_in_shm else num_rows * row_bytes
    head = b"".join([bytes([_TABLE]), varint(len(name)), name, bytes([_VERSION]), varint(version),
                     bytes([_ROW_BYTES]), varint(row_bytes), bytes([_NUM_ROWS]), varint(num_rows),
                     bytes([_ROWS]), varint(body)])
    tail = (bytes([_REQUEST_ID]) + varint(request_id) if request_id else b"") + (
        bytes([_IN_SHM, 1]) if rows_in_shm else b"")
    data, view = new_bytes(len(head) + body + len(tail))
    view[:len(head)] = np.frombuffer(head, dtype=np.uint8)
    if not rows_in_shm:
        fill(view[len(head):len(head) + body].reshape(num_rows, row_bytes))
    view[len(head) + body:] = np.frombuffer(tail, dtype=np.uint8)
    return data


class LookupAnswer:
    """A parsed LookupResponse whose `rows` is a zero-copy view into the received bytes."""
    __slots__ = ("table", "version", "row_bytes", "num_rows", "rows", "request_id", "rows_in_shm",
                 "error_code", "error_message")

    def __init__(self):
        self.table, self.version, self.row_bytes, self.num_rows, self.request_id = "", 0, 0, 0, 0
        self.rows, self.rows_in_shm = memoryview(b""), False
        self.error_code, self.error_message = 0, ""  # a StreamLookup request that failed alone


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint in LookupResponse")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def parse_lookup_response(data: bytes) -> LookupAnswer:
    """Parse any valid LookupResponse encoding (fields in any order, unknown fields skipped)."""
    view, pos, out = memoryview(data), 0, LookupAnswer()
    while pos < len(view):
        key, pos = _read_varint(view, pos)
        field, kind = key >> 3, key & 7
        if kind == 0:
            value, pos = _read_varint(view, pos)
            if field == 2:
                out.version = value
            elif field == 3:
                out.row_bytes = value
            elif field == 4:
                out.num_rows = value
            elif field == 6:
                out.request_id = value
            elif field == 7:
                out.rows_in_shm = bool(value)
            elif field == 8:
                out.error_code = value
        elif kind == 2:
            length, pos = _read_varint(view, pos)
            if pos + length > len(view):
                raise ValueError("truncated length-delimited field in LookupResponse")
            if field == 1:
                out.table = bytes(view[pos:pos + length]).decode()
            elif field == 5:
                out.rows = view[pos:pos + length]
            elif field == 9:
                out.error_message = bytes(view[pos:pos + length]).decode(errors="replace")
            pos += length
        elif kind in (1, 5):
            pos += 8 if kind == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {kind} in LookupResponse")
    return out
