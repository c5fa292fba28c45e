"""The project's RowCache, replayed by a numba loop: same sets, ways, batch semantics and victim
order as model_client/row_cache.py (no pins: a trace replay has no steps in flight), fast enough
for millions of accesses. tests/bench/test_rowcache_sim.py checks it hit for hit against RowCache."""
from __future__ import annotations

import numba
import numpy as np

from model_client.row_cache import _GOLDEN

_POLICY = {"lru": 0, "lfu": 1}


@numba.njit(cache=True)
def _replay(ids, bounds, num_sets, ways, policy, decay_every, hit_out):
    n_slots = num_sets * ways
    tags = np.full(n_slots, -1, dtype=np.int64)
    stamp = np.zeros(n_slots, dtype=np.int64)
    uses = np.zeros(n_slots, dtype=np.int64)
    tick, evictions = 0, 0
    scores = np.empty(ways, dtype=np.int64)
    for b in range(len(bounds) - 1):
        tick += 1
        if policy == 1 and tick % decay_every == 0:
            for k in range(n_slots):
                uses[k] >>= 1
        lo, hi = bounds[b], bounds[b + 1]
        batch = np.unique(ids[lo:hi])  # a batch is a set of distinct ids, ascending (as torch.unique)
        miss_ids = np.empty(len(batch), dtype=np.int64)
        miss_sets = np.empty(len(batch), dtype=np.int64)
        n_miss = 0
        for x in batch:
            s = ((x * _GOLDEN) >> 32) & (num_sets - 1)
            found = -1
            for w in range(ways):
                if tags[s * ways + w] == x:
                    found = s * ways + w
                    break
            if found >= 0:
                stamp[found] = tick
                uses[found] += 1
            else:
                miss_ids[n_miss] = x
                miss_sets[n_miss] = s
                n_miss += 1
        # misses grouped by set in batch order; the k-th miss of a set takes its k-th best victim,
        # victims ordered by the scores at the start of the insert (as RowCache computes them)
        order = np.argsort(miss_sets[:n_miss], kind="mergesort")
        k, prev = 0, -1
        ranked = np.empty(ways, dtype=np.int64)
        for m in range(n_miss):
            i = order[m]
            s = miss_sets[i]
            if s != prev:
                for w in range(ways):
                    slot = s * ways + w
                    if tags[slot] < 0:
                        score = -1
                    elif policy == 0:
                        score = stamp[slot]
                    else:
                        score = (min(uses[slot], 1 << 16) << 40) | stamp[slot]
                    scores[w] = score * ways + w
                ranked[:] = np.argsort(scores)
                k, prev = 0, s
            if k < ways:
                slot = s * ways + ranked[k]
                if tags[slot] >= 0:
                    evictions += 1
                tags[slot] = miss_ids[i]
                stamp[slot] = tick
                uses[slot] = 1
            k += 1
        for j in range(lo, hi):  # per-access hit marks: an id hits if it was present at batch start
            x = ids[j]
            hit = True
            for m in range(n_miss):
                if miss_ids[m] == x:
                    hit = False
                    break
            hit_out[j] = hit
    return evictions


def replay(ids: np.ndarray, bounds: np.ndarray, capacity_rows: int, ways: int = 16, policy: str = "lru",
           decay_every: int = 1024) -> tuple[np.ndarray, int, int, int]:
    """(per-access hit mask, num_sets, evictions, distinct-id hits) for a RowCache of
    capacity_rows // ways // power-of-two sets. bounds: batch boundaries into ids (len = batches + 1)."""
    sets = capacity_rows // ways
    num_sets = 1 << (sets.bit_length() - 1)
    hits = np.zeros(len(ids), dtype=np.bool_)
    evictions = _replay(ids.astype(np.int64), bounds.astype(np.int64), num_sets, ways, _POLICY[policy],
                        decay_every, hits)
    return hits, num_sets, int(evictions)
