"""SharedArena: memory of this client's own that a memory server on the same host writes rows into.

Each thread of a MemoryClient has one Segment: a memfd (anonymous memory in no namespace: nothing
under /dev/shm another process could name, list or replace with a symlink), sealed so that it can
never shrink or grow, and mapped here. The client hands it to a server process over the channel it
will send lookups on (`Segment.register`): it listens on a fresh abstract unix socket, asks
RegisterSegment(socket, secret) over that gRPC connection, and sends the fd (SCM_RIGHTS) only to a
peer that first sends the secret, which only the process that received the request knows. The server
answers an id valid only on that connection (memory_service/segments.py).

The unix connection stays open as a tether: closing the segment (or this process dying) closes it,
and the server drops the mapping. After any failed or retried call the client `rotate`s to a fresh
segment: a request it gave up on may still be written late, and must land where nobody reads.
"""
from __future__ import annotations

import array
import fcntl
import hmac
import mmap
import os
import secrets
import socket
import threading
import time
import weakref

import numpy as np

from core.segment_protocol import HANDED, SECRET_BYTES, SOCKET_PREFIX

SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _close(fd: int, memory: mmap.mmap, tethers: list) -> None:
    for tether in tethers:
        tether.close()
    tethers.clear()
    try:
        memory.close()
    except BufferError:  # a caller still holds a view; the mapping goes with it
        pass
    os.close(fd)


def _read_exactly(conn: socket.socket, n: int, deadline: float) -> bytes:
    data = b""
    while len(data) < n:
        conn.settimeout(max(0.001, deadline - time.monotonic()))
        piece = conn.recv(n - len(data))
        if not piece:
            break
        data += piece
    return data


class Segment:
    """One sealed memfd of `size` bytes, mapped here, registered per channel."""

    def __init__(self, size: int):
        fd = os.memfd_create("engram-rows", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            # reserve the pages now: with no memory left this fails here (ENOSPC/ENOMEM), never later
            os.posix_fallocate(fd, 0, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
            memory = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            raise
        self.fd, self.size = fd, size
        self.array = np.frombuffer(memory, dtype=np.uint8)
        self.ids: dict[int, bytes] = {}  # channel index -> the id its server process gave
        self._tethers: list[socket.socket] = []
        self._finalizer = weakref.finalize(self, _close, fd, memory, self._tethers)

    def register(self, channel: int, call, timeout_s: float) -> bytes:
        """The segment's id on `channel`, registering it there first: call(socket, secret, timeout)
        sends RegisterSegment on that channel and returns a future of its response."""
        if channel in self.ids:
            return self.ids[channel]
        deadline = time.monotonic() + timeout_s
        name = SOCKET_PREFIX + secrets.token_hex(16)
        secret = secrets.token_bytes(SECRET_BYTES)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind("\0" + name)
            listener.listen(8)
            listener.settimeout(0.02)
            future = call(name, secret, timeout_s)
            while not future.done() and time.monotonic() < deadline:
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    continue
                try:  # only the peer that knows the secret gets the fd
                    if not hmac.compare_digest(_read_exactly(conn, SECRET_BYTES, deadline), secret):
                        conn.close()
                        continue
                    conn.sendmsg([HANDED], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [self.fd]))])
                except OSError:
                    conn.close()
                    continue
                self._tethers.append(conn)
                break
            answer = future.result(timeout=max(0.001, deadline - time.monotonic()))
        finally:
            listener.close()
        self.ids[channel] = bytes(answer.segment)
        return self.ids[channel]

    def forget(self, channel: int) -> None:
        self.ids.pop(channel, None)

    def close(self) -> None:
        self.array = None
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._finalizer.alive


class SharedArena:
    """Per thread, the segment its lookups write into."""

    def __init__(self, min_bytes: int = 16 << 20):
        self.min_bytes = min_bytes
        self._local = threading.local()
        self._segments: list[Segment] = []  # every thread's, for close()
        self._lock = threading.Lock()

    def segment(self, nbytes: int) -> Segment:
        """This thread's segment, at least nbytes; OSError when the memory cannot be reserved."""
        current = getattr(self._local, "segment", None)
        if current is None or current.size < nbytes:
            self.rotate(max(nbytes, self.min_bytes, 2 * current.size if current else 0))
        return self._local.segment

    def rotate(self, nbytes: int | None = None) -> None:
        """Replace this thread's segment by a new one; the old one is closed (servers drop it)."""
        current = getattr(self._local, "segment", None)
        size = nbytes or (current.size if current else self.min_bytes)
        self._local.segment = None
        if current is not None:
            current.close()
        segment = Segment(size)
        with self._lock:
            self._segments = [s for s in self._segments if s.alive] + [segment]
        self._local.segment = segment

    def close(self) -> None:
        self._local.segment = None
        with self._lock:
            for segment in self._segments:
                segment.close()
            self._segments = []
