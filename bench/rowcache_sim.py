"""The project's RowCache, replayed by a numba loop: same sets, ways, batch semantics and victim
order as model_client/row_cache.py (no pins: a trace replay has no steps in flight), fast enough
for millions of accesses. tests/bench/test_rowcache_sim.py checks it hit for hit against RowCache."""
from __future__ import annotations

import numba
import numpy as np

from model_client.host_index import _set_of as _set  # RowCache.set_of for one id, compiled

_POLICY = {"lru": 0, "lfu": 1, "lookahead": 2}
_NO_USE = np.int64(1) << 50


@numba.njit(cache=True)
def _find(tags, x, s, ways):
    for w in range(ways):
        if tags[s * ways + w] == x:
            return s * ways + w
    return -1


@numba.njit(cache=True)
def _replay(ids, bounds, num_sets, ways, policy, decay_every, window, next_batch, hit_out):
    """next_batch[j]: the batch of the next access to ids[j] after batch_of(j), or a huge value."""
    n_slots = num_sets * ways
    tags = np.full(n_slots, -1, dtype=np.int64)
    stamp = np.zeros(n_slots, dtype=np.int64)
    uses = np.zeros(n_slots, dtype=np.int64)
    upcoming = np.full(n_slots, _NO_USE, dtype=np.int64)
    tick, evictions = 0, 0
    scores = np.empty(ways, dtype=np.int64)
    n_batches = len(bounds) - 1
    for b in range(n_batches):
        if policy == 2 and b + window < n_batches:  # reveal batch b + window (announce, before lookup)
            r = b + window
            when = r + 1
            for x in np.unique(ids[bounds[r]:bounds[r + 1]]):
                slot = _find(tags, x, _set(x, num_sets), ways)
                if slot >= 0:
                    cur = upcoming[slot]
                    if not (cur > tick and cur < when):
                        upcoming[slot] = when
        tick += 1
        if policy == 1 and tick % decay_every == 0:
            for k in range(n_slots):
                uses[k] >>= 1
        lo, hi = bounds[b], bounds[b + 1]
        batch = np.unique(ids[lo:hi])  # a batch is a set of distinct ids, ascending (as torch.unique)
        known = np.full(len(batch), _NO_USE, dtype=np.int64)
        for j in range(lo, hi):  # the last occurrence in the batch knows the next batch
            k = np.searchsorted(batch, ids[j])
            nb = next_batch[j]
            known[k] = nb + 1 if nb <= b + window else _NO_USE
        miss_ids = np.empty(len(batch), dtype=np.int64)
        miss_sets = np.empty(len(batch), dtype=np.int64)
        miss_known = np.empty(len(batch), dtype=np.int64)
        n_miss = 0
        for q in range(len(batch)):
            x = batch[q]
            s = _set(x, num_sets)
            found = _find(tags, x, s, ways)
            if found >= 0:
                stamp[found] = tick
                uses[found] += 1
                if policy == 2:
                    upcoming[found] = known[q]
            else:
                miss_ids[n_miss] = x
                miss_sets[n_miss] = s
                miss_known[n_miss] = known[q]
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
                    elif policy == 1:
                        score = (min(uses[slot], 1 << 16) << 40) | stamp[slot]
                    elif upcoming[slot] > tick and upcoming[slot] < _NO_USE:
                        score = (1 << 41) + (1 << 40) - upcoming[slot]
                    else:
                        score = stamp[slot]
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
                upcoming[slot] = miss_known[i] if policy == 2 else _NO_USE
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


def next_batches(ids: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """For each access, the batch of the next access to the same id (a huge value if none)."""
    from .cache_sim import next_use
    batch_of = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    nxt = next_use(ids)
    out = np.full(len(ids), 1 << 40, dtype=np.int64)
    has = nxt < len(ids)
    out[has] = batch_of[nxt[has]]
    return out


def replay(ids: np.ndarray, bounds: np.ndarray, capacity_rows: int, ways: int = 16, policy: str = "lru",
           decay_every: int = 1024, window: int = 0) -> tuple[np.ndarray, int, int]:
    """(per-access hit mask, num_sets, evictions) for a RowCache of capacity_rows // ways sets.
    bounds: batch boundaries into ids (len = batches + 1).
    lookahead: each batch is announced `window` batches before it is read."""
    num_sets = capacity_rows // ways
    hits = np.zeros(len(ids), dtype=np.bool_)
    ids, bounds = ids.astype(np.int64), bounds.astype(np.int64)
    nb = next_batches(ids, bounds) if policy == "lookahead" else np.zeros(len(ids), dtype=np.int64)
    evictions = _replay(ids, bounds, num_sets, ways, _POLICY[policy], decay_every, window, nb, hits)
    return hits, num_sets, int(evictions)
