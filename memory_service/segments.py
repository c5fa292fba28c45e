"""Segments: client memory a server process may write rows into, handed over by its owner.

A client on the same host does not name a file: it creates a memfd (anonymous, in no namespace),
seals it against shrinking, growing and further sealing, and listens on a fresh abstract unix socket.
It asks this process over its own gRPC connection to RegisterSegment(socket, secret); the server
connects, sends the secret (so the client hands its memory only to the process that received its
request), receives the fd with SCM_RIGHTS, checks it, maps it and answers a random 16-byte id. That
id is valid only on the gRPC connection that registered it (`context.peer()`): another process that
learned it, or guessed it (2^128), is refused. Nothing under /dev/shm is looked up, no path is
opened, no symlink can be followed.

What is refused, and why:
- no memfd (a regular file, a pipe, a /dev/shm file): it must live on the kernel's internal tmpfs
  (fstatfs) and carry F_SEAL_SHRINK and F_SEAL_SEAL, which an ordinary tmpfs file cannot;
- a hugetlb memfd: writing into a hole punched in it would SIGBUS this process (tmpfs holes refill);
- a segment that could shrink under a write (SIGBUS): the seal forbids it, for every process;
- a segment whose pages its owner has not allocated: writing into it would charge the server's
  memory for the client's segment (a 4 GiB sparse memfd cost its sender nothing); the owner
  fallocates it before it hands it over, and the server never allocates client memory;
- more than `max_peer_bytes` of segments per connection or `max_total_bytes` in this process (and
  more than `max_per_peer` / `capacity` segments): the least recently used goes (its owner
  re-registers), so holes punched into registered segments can cost the server a bounded amount;
- the memfd of another process, reopened through /proc/PID/fd (possible for the same uid): refused
  when its inode is already registered here by another process (SO_PEERCRED of the socket peer);
- more than `max_per_peer` segments per connection or `capacity` in all: the least recently used
  goes (its owner re-registers).
The unix connection stays open as a tether: when the client closes the segment or dies, the watcher
sees the socket close and drops the mapping, so nothing is left to reap.
"""
from __future__ import annotations

import array
import ctypes
import fcntl
import logging
import mmap
import os
import secrets
import select
import socket
import stat
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from core.errors import StoreError
from core.segment_protocol import (  # noqa: F401
    DISABLED,
    HANDED,
    ID_BYTES,
    SECRET_BYTES,
    SOCKET_NAME,
    SOCKET_PREFIX,
    UNKNOWN,
    UNREACHABLE,
)

logger = logging.getLogger("engram_memory")

TMPFS_MAGIC = 0x01021994   # memfd_create's files live on the kernel's internal tmpfs mount
REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)  # Linux 5.1; writes would fail

_libc = ctypes.CDLL(None, use_errno=True)


def filesystem_type(fd: int) -> int:
    """f_type of fstatfs(fd): the first field of struct statfs on Linux (a long)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.fstatfs(fd, buf) != 0:
        raise OSError(ctypes.get_errno(), "fstatfs failed")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def peer_pid(sock: socket.socket) -> int:
    """The pid (in this process's pid namespace, 0 if not visible) of the unix socket's peer."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


@dataclass(eq=False)
class _Segment:
    peer: str
    owner_pid: int
    inode: tuple[int, int]
    memory: mmap.mmap
    array: np.ndarray
    tether: socket.socket
    used: float = field(default_factory=time.monotonic)


def _receive_fd(sock: socket.socket) -> int:
    """One fd sent with SCM_RIGHTS and the byte HANDED; anything else is refused (extra fds closed)."""
    data, ancdata, flags, _ = sock.recvmsg(1, socket.CMSG_SPACE(struct.calcsize("i")))
    fds = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += array.array("i", payload[:len(payload) - len(payload) % 4]).tolist()
    if data != HANDED or len(fds) != 1 or flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise StoreError("bad_request", "RegisterSegment: the client's socket must send exactly one fd "
                         "(a sealed memfd) with one byte; it sent "
                         f"{len(data)} byte(s) and {len(fds)} fd(s)")
    return fds[0]


def _check_memfd(fd: int, max_bytes: int) -> int:
    """The size of a memfd this process may map and write without risk; raises otherwise."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or filesystem_type(fd) != TMPFS_MAGIC:
        raise StoreError("bad_request", "RegisterSegment: the fd is not a memfd (memfd_create on "
                         "tmpfs; hugetlb memfds, files and pipes are refused)")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0
    if seals & REQUIRED_SEALS != REQUIRED_SEALS or seals & (fcntl.F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
        raise StoreError("bad_request", f"RegisterSegment: the memfd's seals are {seals:#x}; it must carry "
                         "F_SEAL_SHRINK and F_SEAL_SEAL, and no write seal, so it cannot shrink under a write")
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDWR:
        raise StoreError("bad_request", "RegisterSegment: the memfd must be open for reading and writing")
    if not 4096 <= st.st_size <= max_bytes:
        raise StoreError("bad_request", f"RegisterSegment: the memfd has {st.st_size} B; segments of "
                         f"4096 B to {max_bytes} B are accepted")
    if st.st_blocks * 512 < st.st_size:
        raise StoreError("bad_request", f"RegisterSegment: {st.st_blocks * 512} of the memfd's {st.st_size} B "
                         "are allocated: its owner must allocate the whole segment (fallocate) before handing it over")
    return st.st_size


class SegmentTable:
    """This server process's registered segments, by id; one watcher thread drops closed ones."""

    # A client thread's segment holds one lookup's rows: 16 MiB (65,536 rows of 256 B) by default,
    # doubled as lookups grow; 1 GiB per segment and per connection, 4 GiB per server process.
    def __init__(self, enabled: bool = True, capacity: int = 256, max_per_peer: int = 32,
                 max_bytes: int = 1 << 30, max_peer_bytes: int = 1 << 30, max_total_bytes: int = 4 << 30,
                 connect_timeout_s: float = 0.5, registrations: int = 8):
        self.enabled, self.capacity, self.max_per_peer = enabled, capacity, max_per_peer
        self.max_bytes, self.max_peer_bytes, self.max_total_bytes = max_bytes, max_peer_bytes, max_total_bytes
        self.connect_timeout_s = connect_timeout_s
        self._segments: OrderedDict[bytes, _Segment] = OrderedDict()
        self._lock = threading.Lock()
        # a client that connects and then stalls holds one thread for connect_timeout_s at most
        self._registering = threading.BoundedSemaphore(registrations)
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="segment-watcher")
        self._watcher.start()

    # ---- registration -------------------------------------------------------------------------------
    def register(self, socket_name: str, secret: bytes, peer: str) -> tuple[bytes, int]:
        """Fetch the client's memfd from its socket; (segment id, size)."""
        if not self.enabled:
            raise StoreError("not_ready", f"{DISABLED} (started with --no-shared-memory): send "
                             "lookups without a segment")
        if not SOCKET_NAME.fullmatch(socket_name):
            raise StoreError("bad_request", f"socket {socket_name[:48]!r} must be {SOCKET_PREFIX!r} "
                             "followed by 32 hex digits")
        if len(secret) != SECRET_BYTES:
            raise StoreError("bad_request", f"secret has {len(secret)} bytes; it must have {SECRET_BYTES}")
        if not self._registering.acquire(blocking=False):
            raise StoreError("too_large", "RegisterSegment: every registration slot of this server "
                             "process is busy; retry")
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(self.connect_timeout_s)
            try:
                try:
                    sock.connect("\0" + socket_name)
                except OSError as e:
                    raise StoreError("not_ready", f"{UNREACHABLE} ({e.strerror or e}): the client is on "
                                     "another host or network namespace; send lookups without a segment") from None
                try:
                    sock.sendall(secret)
                    fd = _receive_fd(sock)
                except OSError as e:
                    raise StoreError("bad_request", f"RegisterSegment: the client's socket did not hand "
                                     f"over a segment ({e.strerror or e})") from None
                try:
                    size = _check_memfd(fd, self.max_bytes)
                    st = os.fstat(fd)
                    try:
                        memory = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                    except OSError as e:
                        raise StoreError("bad_request", f"RegisterSegment: the memfd cannot be mapped for "
                                         f"writing ({e.strerror})") from None
                finally:
                    os.close(fd)
                return self._add(peer, peer_pid(sock), (st.st_dev, st.st_ino), memory, sock), size
            except BaseException:
                sock.close()
                raise
        finally:
            self._registering.release()

    def _add(self, peer: str, pid: int, inode, memory: mmap.mmap, tether: socket.socket) -> bytes:
        with self._lock:
            for other in self._segments.values():
                if other.inode == inode and other.owner_pid != pid:
                    memory.close()
                    logger.warning("refused a segment of process %d offered by process %d", other.owner_pid, pid)
                    raise StoreError("forbidden", "RegisterSegment: this memfd is registered here by "
                                     "another process: only its owner may hand it over")
            size = len(memory)
            mine = [k for k, s in self._segments.items() if s.peer == peer]
            while mine and (len(mine) >= self.max_per_peer or
                            sum(len(self._segments[k].memory) for k in mine) + size > self.max_peer_bytes):
                self._drop(mine.pop(0))
            while self._segments and (len(self._segments) >= self.capacity or
                                      sum(len(s.memory) for s in self._segments.values()) + size > self.max_total_bytes):
                self._drop(next(iter(self._segments)))
            segment_id = secrets.token_bytes(ID_BYTES)
            tether.setblocking(False)
            self._segments[segment_id] = _Segment(peer, pid, inode, memory, np.frombuffer(memory, np.uint8), tether)
            return segment_id

    # ---- lookups ------------------------------------------------------------------------------------
    def rows(self, segment_id: bytes, peer: str, offset: int, num_rows: int, row_bytes: int) -> np.ndarray:
        """A writable uint8 [num_rows, row_bytes] view of the segment `segment_id` registered on `peer`."""
        if not self.enabled:
            raise StoreError("not_ready", f"{DISABLED} (started with --no-shared-memory): send "
                             "lookups without a segment")
        with self._lock:
            segment = self._segments.get(bytes(segment_id))
            if segment is None or segment.peer != peer:
                raise StoreError("not_ready", f"{UNKNOWN} (RegisterSegment it on this channel)")
            self._segments.move_to_end(bytes(segment_id))
            segment.used = time.monotonic()
            rows = segment.array
        size = num_rows * row_bytes
        if offset + size > len(rows):
            raise StoreError("bad_request", f"segment_offset {offset} + {num_rows} rows x {row_bytes} B "
                             f"= {offset + size} B is beyond the segment's {len(rows)} B")
        return rows[offset:offset + size].reshape(num_rows, row_bytes)

    def __len__(self) -> int:
        return len(self._segments)

    # ---- lifetime -----------------------------------------------------------------------------------
    def _drop(self, segment_id: bytes) -> None:
        segment = self._segments.pop(segment_id)
        segment.tether.close()
        segment.array = None
        try:
            segment.memory.close()
        except BufferError:  # a lookup still writes through a view: the mapping dies with it
            pass

    def _watch(self) -> None:
        """Drop segments whose owner closed its end of the tether (closed the segment, or died)."""
        while not self._closed.wait(0.2):
            with self._lock:
                tethers = {s.tether.fileno(): k for k, s in self._segments.items()}
            if not tethers:
                continue
            poller = select.poll()
            for fd in tethers:
                poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            ready = poller.poll(0)
            if ready:
                with self._lock:
                    for fd, _ in ready:
                        key = tethers[fd]
                        if key in self._segments:  # any byte or a hang-up: the owner is done with it
                            self._drop(key)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for key in list(self._segments):
                self._drop(key)
