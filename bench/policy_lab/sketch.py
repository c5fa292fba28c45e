"""The lab's count-min sketch: `depth` rows of 2**sk_log2 int32 counters, one flat array.

Id x counts in counter `_h(x, d + 1) & mask` of row d (a splitmix64 finalizer, seeded per row); its
estimate is the least of its counters. `_inc` adds one read, capped at `cap`, conservatively (only
the counters equal to the estimate grow) or not; it returns 1 for an unsaturated read, which the
replay counts towards the halving of every counter (sim.py, param sk_reset). This is the lab's own
hash and width (a power of two), not model_client.frequency_sketch's: the two agree in kind, not bit
for bit (tests/bench/test_policy_lab.py measures how close their hit rates are).
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _h(x, seed):
    z = np.uint64(x) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True)
def _est(sk, x, depth, mask, width):
    m = 1 << 30
    for d in range(depth):
        v = sk[d * width + np.int64(_h(x, d + 1) & np.uint64(mask))]
        if v < m:
            m = v
    return m


@numba.njit(cache=True)
def _inc(sk, x, depth, mask, width, cap, conservative):
    m = _est(sk, x, depth, mask, width)
    if m >= cap:
        return 0
    for d in range(depth):
        i = d * width + np.int64(_h(x, d + 1) & np.uint64(mask))
        if conservative == 0 or sk[i] == m:
            if sk[i] < cap:
                sk[i] += 1
    return 1
