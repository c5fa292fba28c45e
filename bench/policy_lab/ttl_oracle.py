"""The TTL oracle: an upper bound of policies that decide at each access, from features, how long to
keep the row.

Each access gets a class from its features: the n-gram order (2- or 3-gram sub-table), k (how often
the id was read so far, 2 x log2 buckets), the gap since its previous access (log2 passes), and
optionally the id's count in the whole trace ("fut": future knowledge) or in another text ("prior:
SOURCE", prior.py). Each class gets one TTL (keep the row T passes after an access; it hits when its
next access comes sooner), chosen optimally under the capacity constraint with a Lagrange multiplier
(fully associative, occupancy averaged over the passes). The classes are learned on the trace
itself, so the bound is optimistic.
  features: none | k | gap | all (k and gap) | fut | futall | prior:SOURCE | all:SOURCE
"""
from __future__ import annotations

import numpy as np

from bench.cache_sim import next_use

from . import lab, sim
from . import traces as tr

FEATURES = ("none", "k", "gap", "all", "fut", "futall", "prior:SOURCE", "all:SOURCE")


def _bucket(counts: np.ndarray) -> np.ndarray:
    return np.minimum(np.floor(np.log2(counts + 1) * 2).astype(int), 15)


def classes(ids: np.ndarray, bounds: np.ndarray, col3: np.ndarray, feat: str, prior_fn=None):
    """(class per access, gap in passes to the access's next use (1 << 30 if none))."""
    P = len(bounds) - 1
    passof = np.repeat(np.arange(P), np.diff(bounds))
    nu = next_use(ids)
    has = nu < len(ids)
    gap = np.full(len(ids), 1 << 30)
    gap[has] = passof[nu[has]] - passof[has]
    prev = np.full(len(ids), -1)
    prev[nu[has]] = np.nonzero(has)[0]
    pgap = np.where(prev >= 0, passof - passof[np.maximum(prev, 0)], 1 << 30)
    order = np.argsort(ids, kind="stable")   # count so far
    s = ids[order]
    start = np.r_[True, s[1:] != s[:-1]]
    grp = np.cumsum(start) - 1
    pos = np.arange(len(s)) - np.nonzero(start)[0][grp]
    k = np.empty(len(ids), np.int64)
    k[order] = pos
    kb = np.minimum(np.floor(np.log2(k + 1) * 2).astype(int), 15)
    gb = np.where(pgap >= 1 << 30, 15, np.minimum(np.floor(np.log2(np.maximum(pgap, 1))).astype(int), 14))
    if feat.startswith("fut"):
        _, inv, cn = np.unique(ids, return_inverse=True, return_counts=True)
        extra = _bucket(cn[inv])
    elif ":" in feat:
        extra = _bucket(prior_fn(feat.split(":")[1])[ids].astype(np.int64))
    if feat.startswith("fut") or ":" in feat:
        base = feat.split(":")[0]
        if base in ("fut", "prior"):
            cls = col3.astype(int) * 16 + extra
        else:
            cls = ((col3.astype(int) * 16 + kb) * 16 + gb) * 16 + extra
    elif feat == "all":
        cls = (col3.astype(int) * 16 + kb) * 16 + gb
    elif feat == "k":
        cls = col3.astype(int) * 16 + kb
    elif feat == "gap":
        cls = col3.astype(int) * 16 + gb
    elif feat == "none":
        cls = np.zeros(len(ids), int)
    else:
        raise ValueError(f"features must be one of {', '.join(FEATURES)} (got {feat!r})")
    return cls, gap


def ttl_rate(cls: np.ndarray, gap: np.ndarray, cap: int, passes: int) -> float:
    """Hit rate of the best per-class TTLs whose average occupancy fits in `cap` rows."""
    ncls = cls.max() + 1
    Ts = np.unique(np.r_[0, np.round(2 ** np.arange(0, 15, 0.25)).astype(int)])
    H = np.zeros((ncls, len(Ts)))   # per class, hits(T) and occupancy(T)
    O = np.zeros((ncls, len(Ts)))
    for c in np.unique(cls):
        g = np.sort(gap[cls == c])
        cs = np.r_[0, np.cumsum(g.astype(float))]
        idx = np.searchsorted(g, Ts, side="left")  # number with gap < T
        H[c] = idx
        O[c] = cs[idx] + (len(g) - idx) * Ts
    budget = cap * passes
    lo, hi = 0.0, 10.0
    for _ in range(60):
        lam = (lo + hi) / 2
        best = np.argmax(H - lam * O, axis=1)
        occ = O[np.arange(ncls), best].sum()
        if occ > budget:
            lo = lam
        else:
            hi = lam
    best = np.argmax(H - hi * O, axis=1)
    return H[np.arange(ncls), best].sum() / len(cls)


def report(traces, tag: str, tokens: int, feat: str = "all", layer: int = 1, fracs=(0.01, 0.05)) -> list[str]:
    from .prior import prior
    ids, bounds, total, _ = tr.load(traces, tag, tokens, layer)
    col3 = tr.order3(traces, tag, tokens, ids, layer)
    cls, gap = classes(ids, bounds, col3, feat, lambda source: prior(source, layer, traces))
    lines = []
    for frac in fracs:
        rate = ttl_rate(cls, gap, sim.capacity_rows(total, frac), len(bounds) - 1)
        b = lab.belady(traces, tag, tokens, layer, frac)["belady"]
        lines.append(f"{tag} {tokens} {frac} features={feat}: TTL-oracle {rate:.4f} ({rate/b:.1%} of Belady {b:.4f})")
    return lines
