"""SharedSegments: the clients' shared-memory segments a server process writes rows into.

A client on the same host names a segment it created under /dev/shm (LookupRequest.shm_name, which
must start with "engram-"); the server gathers the rows straight into it at shm_offset, so the rows
never pass through gRPC's transport: on this 2-core machine that transport, not the gather, bounds a
65,536-row lookup (BENCHMARKS.md). Segments stay mapped (up to `capacity`, least recently used
unmapped first) because mapping costs more than a small lookup. A client rotates to a new segment
after any failed call, so a late write from an abandoned request can never land in rows it reads.
"""
from __future__ import annotations

import mmap
import os
import re
import threading
from collections import OrderedDict

import numpy as np

from .store import StoreError

SHM_DIR = "/dev/shm"
NAME = re.compile(r"^engram-[A-Za-z0-9_.-]{1,200}$")


class SharedSegments:
    def __init__(self, enabled: bool = True, capacity: int = 256):
        self.enabled, self.capacity = enabled, capacity
        self._maps: OrderedDict[str, tuple[mmap.mmap, np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    def rows(self, name: str, offset: int, num_rows: int, row_bytes: int) -> np.ndarray:
        """A writable uint8 [num_rows, row_bytes] view of segment `name` at `offset`."""
        if not self.enabled:
            raise StoreError("FAILED_PRECONDITION", "this server does not write into shared memory "
                             "(started with --no-shared-memory): send the lookup without shm_name")
        if not NAME.match(name):
            raise StoreError("INVALID_ARGUMENT", f"shm_name {name[:80]!r} must be 'engram-' followed by "
                             "letters, digits, '_', '.' or '-'")
        array = self._open(name)
        size = num_rows * row_bytes
        if offset + size > len(array):
            raise StoreError("INVALID_ARGUMENT", f"shm_offset {offset} + {num_rows} rows x {row_bytes} B "
                             f"= {offset + size} B is beyond segment {name}'s {len(array)} B")
        return array[offset:offset + size].reshape(num_rows, row_bytes)

    def _open(self, name: str) -> np.ndarray:
        with self._lock:
            path = os.path.join(SHM_DIR, name)
            entry = self._maps.get(name)
            if entry is not None:
                try:
                    st = os.stat(path)
                    inode = st.st_ino if st.st_size >= len(entry[1]) else -1  # shrunk: remap
                except OSError:
                    inode = -1
                if inode == entry[2]:
                    self._maps.move_to_end(name)
                    return entry[1]
                self._drop(name)  # unlinked or replaced: the client moved on
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError as e:
                raise StoreError("FAILED_PRECONDITION", f"shared-memory segment {name} cannot be opened here "
                                 f"({e.strerror}): the client is on another host or IPC namespace") from None
            try:
                size, inode = os.fstat(fd).st_size, os.fstat(fd).st_ino
                if size == 0:
                    raise StoreError("INVALID_ARGUMENT", f"shared-memory segment {name} is empty")
                try:  # a sparse segment on a full /dev/shm would SIGBUS this process at the write
                    os.posix_fallocate(fd, 0, size)
                except OSError as e:
                    raise StoreError("FAILED_PRECONDITION", f"shared-memory segment {name} cannot be "
                                     f"backed ({e.strerror}): /dev/shm is full") from None
                segment = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            array = np.frombuffer(segment, dtype=np.uint8)
            self._maps[name] = (segment, array, inode)
            while len(self._maps) > self.capacity:
                self._drop(next(iter(self._maps)))
            return array

    def _drop(self, name: str) -> None:
        segment, array, _ = self._maps.pop(name)
        del array
        try:
            segment.close()
        except BufferError:  # a lookup still writes through a view: let the mapping die with it
            pass

    def close(self) -> None:
        with self._lock:
            for name in list(self._maps):
                self._drop(name)
