"""Huge pages for the table map: one TLB entry per 2 MiB of rows instead of per 4 KiB.

A gather of random rows touches a new page per row, so on 4 KiB pages every row costs a TLB miss
and a page walk; numpy backs a large in-RAM array with transparent huge pages, which is most of
the gap between a gather from LMDB's map and the in-RAM floor (bench/store.py: 256 B rows of a
2.5 GiB table, 65,536 per batch: 60-65% of the floor on 4 KiB pages, 82-91% PMD-mapped).

The kernel maps a file page with one PMD entry when its page-cache folio is 2 MiB (ext4 and xfs
have large folios on Linux >= 6.16 / 5.18). Folios written by a load are large already; pages read
back from disk are only as large as the readahead that read them, and LMDB turns readahead off
(MADV_RANDOM: rows are read at random). MADV_HUGEPAGE on the map makes a fault read the whole
aligned 2 MiB folio instead, and maps it with a PMD.

That is right when the store fits in RAM (a cold table then also warms at disk speed: 2.5 GiB in
under 3 s here, against 32,000 rows/s of 4 KiB random reads), and wrong when it does not: a random
row would read 2 MiB and evict 2 MiB of other rows. So `auto` advises it only for a store whose
used bytes are at most half of this machine's (or this container's) memory.
"""
from __future__ import annotations

import ctypes
import os

MODES = ("auto", "on", "off")
MADV_HUGEPAGE = 14
PAGE = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def memory_bytes() -> int:
    """Physical memory, or the cgroup v2 limit of this container when that is lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def wanted(mode: str, store_bytes: int, memory: int | None = None) -> bool:
    """Whether to advise huge pages for a store of `store_bytes` in use."""
    if mode not in MODES:
        raise ValueError(f"huge_pages must be one of {', '.join(MODES)} (got {mode!r})")
    if mode != "auto":
        return mode == "on"
    return store_bytes <= (memory if memory is not None else memory_bytes()) // 2


def advise(address: int, nbytes: int) -> bool:
    """MADV_HUGEPAGE on the pages covering [address, address + nbytes); False if the kernel refused
    (no THP support, or THP disabled for this process): reads are then as before, on 4 KiB pages."""
    start = address - address % PAGE
    stop = -(-(address + nbytes) // PAGE) * PAGE
    return _libc.madvise(start, stop - start, MADV_HUGEPAGE) == 0
