"""Offline cache simulators over row-access traces, compiled with numba.

A trace is one Engram layer's row ids in access order (token by token, columns in order). The
fully associative simulators count hits per access:
  lru_hits  least recently used;
  opt_hits  Belady's MIN: on a miss with a full cache evict the row whose next use is farthest
            (clairvoyant, the ceiling for any policy of that capacity);
and `infinite_hits` is the ceiling of any capacity (every access but the first of each row).
Both use a binary heap with lazy deletion: O(accesses x log capacity).
"""
from __future__ import annotations

import numba
import numpy as np


def next_use(trace: np.ndarray) -> np.ndarray:
    """For each access, the index of the next access to the same row (len(trace) if none)."""
    order = np.argsort(trace, kind="stable")
    nxt = np.full(len(trace), len(trace), dtype=np.int64)
    same = trace[order[1:]] == trace[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def infinite_hits(trace: np.ndarray) -> int:
    return int(len(trace) - len(np.unique(trace)))


@numba.njit(cache=True)
def _heap_push(keys, vals, size, key, val):
    i = size
    keys[i], vals[i] = key, val
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] >= keys[i]:
            break
        keys[parent], keys[i] = keys[i], keys[parent]
        vals[parent], vals[i] = vals[i], vals[parent]
        i = parent
    return size + 1


@numba.njit(cache=True)
def _heap_pop(keys, vals, size):
    """Pop the largest key; returns (key, val, new size)."""
    key, val = keys[0], vals[0]
    size -= 1
    keys[0], vals[0] = keys[size], vals[size]
    i = 0
    while True:
        left, right, top = 2 * i + 1, 2 * i + 2, i
        if left < size and keys[left] > keys[top]:
            top = left
        if right < size and keys[right] > keys[top]:
            top = right
        if top == i:
            break
        keys[top], keys[i] = keys[i], keys[top]
        vals[top], vals[i] = vals[i], vals[top]
        i = top
    return key, val, size


@numba.njit(cache=True)
def _compact(keys, vals, size, current, cached):
    live = 0
    for j in range(size):
        if cached[vals[j]] and current[vals[j]] == keys[j]:
            keys[live], vals[live] = keys[j], vals[j]
            live += 1
    size = 0
    for j in range(live):
        size = _heap_push(keys, vals, size, keys[j], vals[j])
    return size


@numba.njit(cache=True)
def _priority_cache(dense, priority, capacity, heap_room, hit):
    """Hits of a cache evicting the resident row with the largest priority, where `priority[i]` is
    the key access i gives its row (a later access of the row replaces it: lazy deletion). hit: a
    bool mask of len(dense) to mark each hit in, or empty."""
    n = len(dense)
    current = np.zeros(dense.max() + 1, dtype=np.int64)     # the live key of each cached row
    cached = np.zeros(dense.max() + 1, dtype=np.bool_)
    keys = np.empty(heap_room, dtype=np.int64)
    vals = np.empty(heap_room, dtype=np.int64)
    size, resident, hits = 0, 0, 0
    for i in range(n):
        row = dense[i]
        if cached[row]:
            hits += 1
            if len(hit):
                hit[i] = True
        else:
            if resident == capacity:
                while True:  # pop until a live entry: stale keys were superseded by later accesses
                    key, victim, size = _heap_pop(keys, vals, size)
                    if cached[victim] and current[victim] == key:
                        cached[victim] = False
                        resident -= 1
                        break
            resident += 1
        current[row] = priority[i]
        cached[row] = True
        if size == heap_room:  # keep only live entries
            size = _compact(keys, vals, size, current, cached)
        size = _heap_push(keys, vals, size, priority[i], row)
    return hits


def _dense(trace: np.ndarray) -> np.ndarray:
    return np.unique(trace, return_inverse=True)[1].astype(np.int64)


_NO_MASK = np.zeros(0, dtype=np.bool_)


def opt_hits(trace: np.ndarray, capacity: int, hit: np.ndarray = _NO_MASK) -> int:
    """Belady's MIN: the evicted row is the one used again farthest in the future. hit: a bool
    array like trace to mark each hit in (optional)."""
    if capacity <= 0:
        return 0
    nxt = next_use(trace)
    # keys must be distinct per live entry for lazy deletion: next-use indices are
    return int(_priority_cache(_dense(trace), nxt, capacity, 4 * capacity + 1024, hit))


def lru_hits(trace: np.ndarray, capacity: int) -> int:
    """Least recently used: the largest key is the oldest access, so key = -(access index)."""
    if capacity <= 0:
        return 0
    return int(_priority_cache(_dense(trace), -np.arange(len(trace), dtype=np.int64) - 1, capacity,
                               4 * capacity + 1024, _NO_MASK))


_UNKNOWN = np.int64(1) << 50  # keys at or above: no known next use (ordered by age)


@numba.njit(cache=True)
def _lookahead_cache(dense, nxt, capacity, window, age_weight, heap_room):
    """Evict rows with no use known within the lookahead window first (oldest first, age scaled
    by age_weight[i] of the access that last touched the row), then the known row used farthest
    ahead. A row's use becomes known `window` accesses before it happens (requests are admitted
    that far ahead), and a cached row then gets that use as its key."""
    n = len(dense)
    current = np.zeros(dense.max() + 1, dtype=np.int64)
    cached = np.zeros(dense.max() + 1, dtype=np.bool_)
    keys = np.empty(heap_room, dtype=np.int64)
    vals = np.empty(heap_room, dtype=np.int64)
    size, resident, hits = 0, 0, 0
    for i in range(n):
        j = i + window  # reveal access j: its row's next use is now known
        if j < n:
            r = dense[j]
            if cached[r] and current[r] >= _UNKNOWN:
                current[r] = j
                if size == heap_room:
                    size = _compact(keys, vals, size, current, cached)
                size = _heap_push(keys, vals, size, j, r)
        row = dense[i]
        if cached[row]:
            hits += 1
        else:
            if resident == capacity:
                while True:
                    key, victim, size = _heap_pop(keys, vals, size)
                    if cached[victim] and current[victim] == key:
                        cached[victim] = False
                        resident -= 1
                        break
            resident += 1
        if nxt[i] <= i + window:
            key = nxt[i]
        else:
            key = _UNKNOWN + (n - i) * age_weight[i]
        current[row] = key
        cached[row] = True
        if size == heap_room:
            size = _compact(keys, vals, size, current, cached)
        size = _heap_push(keys, vals, size, key, row)
    return hits


def lookahead_hits(trace: np.ndarray, capacity: int, window: int, age_weight: np.ndarray | None = None) -> int:
    """LRU that never evicts a row needed within the next `window` accesses while another can go
    (window 0: plain LRU; window >= len(trace): Belady). age_weight per access (default 1) scales
    how fast a row with no known use ages: e.g. 3-gram rows age faster than 2-gram rows."""
    if capacity <= 0:
        return 0
    weight = np.ones(len(trace), dtype=np.int64) if age_weight is None else age_weight.astype(np.int64)
    return int(_lookahead_cache(_dense(trace), next_use(trace), capacity, window, weight, 4 * capacity + 1024))
