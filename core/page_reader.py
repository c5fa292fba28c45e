"""PageReader: the pages a batch of rows needs, read from disk with many reads in flight.

A row that is not in the page cache costs a 4 KiB page fault when the gather touches it through
LMDB's memory map, and a fault blocks its thread: one read in flight per server process, where an
NVMe drive needs 32-128 to reach its IOPS (DESIGN.md: ~6x10^4 random 4 KiB reads/s here at 16).
So before the gather, the pages that hold the batch's rows and their checksums are read with
positioned reads (os.preadv) by `depth` threads at once. The reads are buffered: they fill the page
cache, and the gather then finds every page resident and reads the published bytes through the map
as always, with the same per-row checksum (a failure is DATA_LOSS, never a row). LMDB stays the
store and the source of truth; this only decides *when* its pages come off the disk.

Two ways to keep reads in flight (`mode`): "threads", `depth` threads each doing blocking preads,
or "advise", one POSIX_FADV_WILLNEED per run of pages from the calling thread: the kernel queues the
read and returns, so every page of the batch is in flight at once up to the block layer's queue
(nr_requests), and the gather's faults wait for the reads already under way. No threads, no GIL
traffic. advise is the default: on a 36 GiB table it kept 225 reads in flight and served 62.9k
cold rows/s where threads kept 29 (47.9k) and page faults 2.3 (15.7k); BENCHMARKS.md, issue 19.

Every row's check reads its 4 B checksum, stored after its chunk's rows: for a random batch that
is a second cold page per row, which would halve the rows/s. So `warm` reads a table's checksum
ranges (4 / row_bytes of it: 1.2 GB of a 36 GiB table of 128 B rows) once, sequentially, in a
background thread when a table is first opened; the page cache then keeps them, touched by every
lookup, and a cold row costs one read.

Pages already cached cost one syscall each (~1 us, a copy of 4 KiB) and no disk read. Pages shared
by several rows are read once; runs of adjacent pages up to `read_bytes` are one read. One
syscall is the unit of work here, so the loop in each thread is per read, not per row.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PAGE = 4096


def pages_of(offsets: np.ndarray, nbytes: int) -> np.ndarray:
    """Sorted unique page numbers that the byte ranges [offset, offset + nbytes) touch."""
    first = offsets // PAGE
    last = (offsets + (nbytes - 1)) // PAGE
    return np.unique(np.concatenate([first, last]))


def runs_of(pages: np.ndarray, max_pages: int) -> tuple[np.ndarray, np.ndarray]:
    """(first page, page count) of runs of consecutive pages, each at most max_pages long."""
    if not len(pages):
        return pages, pages
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    starts = np.concatenate([[0], breaks])
    lengths = np.diff(np.concatenate([starts, [len(pages)]]))
    # split long runs into pieces of max_pages: piece j of run i starts at pages[starts[i]] + j * max_pages
    pieces = (lengths + max_pages - 1) // max_pages
    run = np.repeat(np.arange(len(starts)), pieces)
    j = np.arange(len(run)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    first = pages[starts[run]] + j * max_pages
    count = np.minimum(max_pages, lengths[run] - j * max_pages)
    return first, count


class PageReader:
    def __init__(self, path, depth: int = 32, read_bytes: int = PAGE, mode: str = "threads"):
        """path: the store's data.mdb; depth: reads in flight (threads mode); read_bytes: the most
        one read covers (a multiple of 4 KiB), for runs of adjacent pages; mode: threads or advise."""
        if depth < 1 or read_bytes < PAGE or read_bytes % PAGE:
            raise ValueError(f"PageReader: depth {depth} must be >= 1 and read_bytes {read_bytes} a "
                             f"positive multiple of {PAGE}")
        if mode not in ("threads", "advise"):
            raise ValueError(f"PageReader: mode {mode!r} must be threads or advise")
        self.mode = mode
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        # no readahead on this descriptor: a random 4 KiB read must not pull in 128 KiB around it
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
        self.depth, self.max_pages = depth, read_bytes // PAGE
        self.pool = ThreadPoolExecutor(depth, thread_name_prefix="page-read") if mode == "threads" else None
        self._local = threading.local()
        self.reads = self.pages = 0  # totals, for metrics and benchmarks
        self._warmed: set = set()
        self.warming: threading.Thread | None = None

    def _scratch(self) -> memoryview:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(self.max_pages * PAGE))
        return buf

    def _read(self, first: np.ndarray, count: np.ndarray) -> None:
        buf, fd = self._scratch(), self.fd
        for page, n in zip(first.tolist(), count.tolist()):
            os.preadv(fd, [buf[:n * PAGE]], page * PAGE)

    def read(self, pages: np.ndarray) -> int:
        """Bring sorted unique pages (pages_of) of the file into the page cache, `depth` reads at a
        time; returns the reads issued. Blocks until all are done."""
        first, count = runs_of(pages, self.max_pages)
        if not len(first):
            return 0
        self.reads += len(first)
        self.pages += int(count.sum())
        if self.mode == "advise":  # queued, not waited for (the gather's faults wait)
            for page, n in zip((first * PAGE).tolist(), (count * PAGE).tolist()):
                os.posix_fadvise(self.fd, page, n, os.POSIX_FADV_WILLNEED)
            return len(first)
        # interleaved shares (read i goes to thread i % depth): equal work, and the drive sees
        # requests spread over the file rather than one thread's sorted run after another's
        shares = min(self.depth, len(first))
        futures = [self.pool.submit(self._read, first[k::shares], count[k::shares]) for k in range(shares)]
        for f in futures:
            f.result()
        return len(first)

    def warm(self, key, starts: np.ndarray, lengths: np.ndarray) -> None:
        """Queue the byte ranges [start, start + length) of the file (a table's checksums, under `key`)
        for reading, once per key, from a background thread; lookups meanwhile go on."""
        if key in self._warmed:
            return
        self._warmed.add(key)

        fd = os.dup(self.fd)  # its own descriptor: close() may run while it works

        def advise():
            try:
                for start, n in zip(starts.tolist(), lengths.tolist()):
                    os.posix_fadvise(fd, start, n, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        self.warming = threading.Thread(target=advise, name="page-warm", daemon=True)
        self.warming.start()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
