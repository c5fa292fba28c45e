"""glibc heap settings of the service: large buffers kept for reuse, and given back by trim()."""
import numpy as np
import pytest

from memory_service.server import ServiceConfig


def test_trim_gives_freed_heap_memory_back():
    """The service's periodic malloc_trim (--trim-s): freed buffers kept by the raised glibc
    thresholds (core/malloc.py) leave the resident set."""
    from core.malloc import keep_large_buffers, trim

    def rss_anon_kib():
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon:"))

    assert keep_large_buffers()
    buffers = [np.ones(8 << 20, dtype=np.uint8) for _ in range(8)]  # 64 MiB in the heap, touched
    del buffers
    before = rss_anon_kib()
    assert trim()
    assert rss_anon_kib() < before - (32 << 10)  # at least half of it went back
    with pytest.raises(ValueError, match=r"ServiceConfig.trim_s: must be >= 0"):
        ServiceConfig(db="x", create=True, trim_s=-1)
