"""SharedArena: a client's shared-memory segment that a memory server on the same host writes rows into.

One segment per MemoryClient and thread, created under /dev/shm with mode 0600 and a name that
carries the creator's pid, grown (replaced) when a lookup needs more room, and unlinked on close;
segments of dead processes (kill -9) are unlinked by the next arena created on the host. The server maps it by name
(LookupRequest.shm_name) and gathers rows straight into it at the offset the client chose, so rows
skip gRPC's transport. After any failed or retried call the client `rotate`s to a fresh segment:
a request it gave up on may still be written late, and must land where nobody reads.
"""
from __future__ import annotations

import mmap
import os
import secrets
import threading
import weakref

import numpy as np

SHM_DIR = "/dev/shm"


def _unlink(path: str, segment: mmap.mmap) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
    try:
        segment.close()
    except BufferError:  # a caller still holds a view; the mapping goes with it
        pass


def reap_orphans() -> int:
    """Unlink segments of client processes that died without cleaning up (kill -9): the name
    carries the creator's pid. Returns how many went."""
    gone = 0
    for name in os.listdir(SHM_DIR):
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "engram" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                gone += 1
            except OSError:
                pass
        except OSError:  # alive, another user's
            pass
    return gone


class SharedArena:
    def __init__(self, min_bytes: int = 16 << 20):
        if not os.path.isdir(SHM_DIR):
            raise OSError(f"{SHM_DIR} is missing: no POSIX shared memory here")
        reap_orphans()
        self.min_bytes = min_bytes
        self._local = threading.local()
        self._finalizers: list = []  # every thread's segments, for close()

    def buffer(self, nbytes: int) -> tuple[str, np.ndarray]:
        """(segment name, uint8 array of at least nbytes) for this thread's next lookup; OSError
        when /dev/shm cannot hold it."""
        current = getattr(self._local, "segment", None)
        if current is None or len(current[1]) < nbytes:
            self.rotate(max(nbytes, self.min_bytes, 2 * len(current[1]) if current else 0))
        return self._local.segment[0], self._local.segment[1]

    def rotate(self, nbytes: int | None = None) -> None:
        """Replace this thread's segment by a new one (the old name is unlinked at once)."""
        current = getattr(self._local, "segment", None)
        size = nbytes or (len(current[1]) if current else self.min_bytes)
        if current is not None:
            self._local.segment = None
            current[2]()  # weakref.finalize: unlink and unmap
        name = f"engram-{os.getpid()}-{secrets.token_hex(8)}"
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            # reserve the pages now: a sparse segment on a full /dev/shm (containers get 64 MiB)
            # would kill whichever process writes first with SIGBUS; this fails with ENOSPC instead
            os.posix_fallocate(fd, 0, size)
            segment = mmap.mmap(fd, size)
        except OSError:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        array = np.frombuffer(segment, dtype=np.uint8)
        finalizer = weakref.finalize(self, _unlink, path, segment)
        self._finalizers = [f for f in self._finalizers if f.alive] + [finalizer]
        self._local.segment = (name, array, finalizer)

    def close(self) -> None:
        self._local.segment = None
        for finalizer in self._finalizers:
            finalizer()
