"""The replay: a set-associative row cache over per-pass deduplicated id traces, compiled with numba.

Same set hash as RowCache (model_client.host_index._set_of), same pass semantics: a pass is a set of
distinct ids (ascending, torch.unique); hits are the ids present at the pass start; hits are touched,
then misses are handled grouped by set, in ascending id order within a set, all with the pass's tick
(insert.py: the three ways misses enter). The sketch (sketch.py) counts every id read (hit_inc 1) or
only misses (0), as it is read, before the pass's inserts.

Params (int64 array P, names in PARAM; `params(**kw)` builds it from DEFAULT):
  score        victim score (scores.py): 0 lru, 1 slot-lfu, 2 sketch-lfu, 3 prior, 4 hyperbolic,
               5 sketch+prior
  admit        only when the set is full: 0 none | 1 f(new) > f(victim) | 2 f(new) >= f(victim)
  adm_src      f for admission: 0 sketch estimate, 1 prior, 2 est + prior_w/16 * prior
  prior_w      weight of the prior in score 5 and adm_src 2, sixteenths
  decay_every  slot-lfu: every slot's uses halve every this many passes (0: never)
  sk_log2, sk_depth, sk_cap, sk_reset, conservative
               sketch: 2**sk_log2 counters a row, sk_depth rows, counters capped at sk_cap, all halve
               after sk_reset unsaturated reads (0: never), conservative update (1) or not (0)
  doorkeeper   a bit array of 8 x width bits ahead of the sketch: an id's first read sets its bit only
  win, prot    window ways (LRU, new ids enter there) and protected ways (SLRU) per set; a hit in
               probation promotes, protected overflow demotes its LRU to probation
  ghost        per set, the last `ghost` evicted tags: a miss found there skips admission
  hit_inc      the sketch counts hits too (1) or misses only (0)
  rank         1: the project's exact batch semantics (no admission/segments), checked against
               RowCache; 2: per-set merge of residents and misses; 0: sequential (admission, segments)
  pin_scored   rank 1: slots hit this pass are ranked last (0, as RowCache) or by their scores (1, the
               first lab's; insert.py says where the two differ)
"""
from __future__ import annotations

from pathlib import Path

import numba
import numpy as np

from model_client.host_index import _set_of

from .insert import _demote, _insert_merged, _insert_ranked, _insert_sequential
from .sketch import _h, _inc

PARAM = ["score", "admit", "decay_every", "sk_log2", "sk_depth", "sk_cap", "sk_reset", "win", "prot",
         "rank", "conservative", "adm_src", "prior_w", "doorkeeper", "ghost", "hit_inc", "pin_scored"]
DEFAULT = dict(score=0, admit=0, decay_every=0, sk_log2=20, sk_depth=4, sk_cap=15, sk_reset=0, win=0, prot=0,
               rank=0, conservative=1, adm_src=0, prior_w=16, doorkeeper=0, ghost=0, hit_inc=1,
               pin_scored=0)


def _drop_stale_caches() -> None:
    """numba keys a function's on-disk cache by its own file alone, so run() would keep an edited
    callee of insert.py, scores.py or sketch.py compiled in as it was: drop this package's caches
    (its __pycache__'s *.nbi indexes) older than its newest numba source before anything compiles."""
    here = Path(__file__).parent
    newest = max((here / f).stat().st_mtime for f in ("sketch.py", "scores.py", "insert.py", "sim.py"))
    for index in (here / "__pycache__").glob("*.nbi"):
        try:
            if index.stat().st_mtime < newest:
                index.unlink()
                for data in index.parent.glob(index.stem + ".*.nbc"):
                    data.unlink(missing_ok=True)
        except FileNotFoundError:   # another process dropped it first
            pass


_drop_stale_caches()


def params(**kw) -> np.ndarray:
    d = dict(DEFAULT)
    for k in kw:
        if k not in d:
            raise KeyError(k)
    d.update(kw)
    return np.array([d[k] for k in PARAM], dtype=np.int64)


@numba.njit(cache=True)
def run(ids, bounds, num_sets, ways, P, prior, hit_out):
    """Replay passes ids[bounds[b]:bounds[b + 1]] through num_sets x ways slots; hit_out[q] says
    whether access q hit. Returns the hits."""
    score_mode, admit, decay_every = P[0], P[1], P[2]
    width = np.int64(1) << P[3]
    mask = width - 1
    depth, cap, reset = P[4], P[5], P[6]
    prot, rank, conservative = P[8], P[9], P[10]
    ghost_n, hit_inc = P[14], P[15]
    use_sketch = (score_mode == 2 or score_mode == 5 or (admit > 0 and P[11] != 1))
    sk = np.zeros(depth * width if use_sketch else 1, dtype=np.int32)
    dk = np.zeros(width * 8 if P[13] else 1, dtype=np.bool_)  # doorkeeper bits
    n_slots = num_sets * ways
    tags = np.full(n_slots, -1, dtype=np.int64)
    stamp = np.zeros(n_slots, dtype=np.int64)
    uses = np.zeros(n_slots, dtype=np.int64)
    born = np.zeros(n_slots, dtype=np.int64)
    seg = np.zeros(n_slots, dtype=np.int8)  # 0 window, 1 probation, 2 protected
    ghosts = np.full(num_sets * max(ghost_n, 1), -1, dtype=np.int64)
    gpos = np.zeros(num_sets, dtype=np.int64)
    added = 0
    tick = 0
    hits_total = 0
    for b in range(len(bounds) - 1):
        tick += 1
        if decay_every > 0 and tick % decay_every == 0:
            for k in range(n_slots):
                uses[k] >>= 1
        lo, hi = bounds[b], bounds[b + 1]
        n = hi - lo
        miss_ids = np.empty(n, dtype=np.int64)
        miss_sets = np.empty(n, dtype=np.int64)
        nm = 0
        for q in range(lo, hi):
            x = ids[q]
            s = _set_of(x, num_sets)
            found = -1
            for w in range(ways):
                if tags[s * ways + w] == x:
                    found = s * ways + w
                    break
            if found >= 0:
                hit_out[q] = True
                hits_total += 1
                stamp[found] = tick
                uses[found] += 1
                if prot > 0 and seg[found] == 1:  # SLRU promotion
                    seg[found] = 2
                    _demote(tags, seg, stamp, s * ways, ways, prot, found)
            else:
                hit_out[q] = False
                miss_ids[nm], miss_sets[nm] = x, s
                nm += 1
            if use_sketch and (hit_inc or found < 0):
                if P[13] and not dk[np.int64(_h(x, 99) & np.uint64(width * 8 - 1))]:
                    dk[np.int64(_h(x, 99) & np.uint64(width * 8 - 1))] = True
                else:
                    added += _inc(sk, x, depth, mask, width, cap, conservative)
                    if reset > 0 and added >= reset:
                        for k in range(len(sk)):
                            sk[k] >>= 1
                        added = 0
                        if P[13]:
                            dk[:] = False
        order = np.argsort(miss_sets[:nm], kind="mergesort")
        if rank == 1:
            _insert_ranked(P, miss_ids, miss_sets, order, nm, tags, stamp, uses, born, tick, ways,
                           sk, depth, mask, width, prior)
        elif rank == 2:
            _insert_merged(P, miss_ids, miss_sets, order, nm, tags, stamp, uses, born, tick, ways,
                           sk, depth, mask, width, prior)
        else:
            _insert_sequential(P, miss_ids, miss_sets, order, nm, tags, stamp, uses, born, seg, ghosts, gpos,
                               tick, ways, sk, depth, mask, width, prior)
    return hits_total


def capacity_rows(total_rows: int, frac: float, ways: int = 16, row_bytes: int = 128, layers: int = 2) -> int:
    """Rows of one layer's cache when the device cache is `frac` of all tables, split evenly between
    the layers (as bench/serving_replay.py sizes it)."""
    cap = max(ways * layers, int(frac * total_rows)) * row_bytes
    slots = (cap // layers) // row_bytes
    return (slots // ways) * ways


def simulate(ids, bounds, cap_rows, ways=16, prior=None, **kw) -> tuple[float, np.ndarray]:
    """(hit rate, per-access hit mask) of a cache of cap_rows rows with params(**kw)."""
    P = params(**kw)
    if prior is None:
        prior = np.zeros(1, dtype=np.int32)
    hit = np.zeros(len(ids), dtype=np.bool_)
    h = run(ids, bounds, cap_rows // ways, ways, P, prior, hit)
    return h / len(ids), hit
