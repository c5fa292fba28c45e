"""Where the hits are: Belady's MIN and slot-LFU (sequential inserts, uses halving every 1,024 passes)
broken down by n-gram order, by reuse distance (passes since the id's previous access) and by the
id's count in the trace; with the compulsory misses and the infinite cache's hits per order.

`belady_mask` is Belady's MIN with a per-access hit mask (bench.cache_sim.opt_hits, fully associative).
"""
from __future__ import annotations

import itertools

import numpy as np

from bench.cache_sim import next_use, opt_hits

from . import sim
from . import traces as tr


def belady_mask(ids: np.ndarray, cap: int) -> np.ndarray:
    hit = np.zeros(len(ids), np.bool_)
    opt_hits(ids, cap, hit)
    return hit


def report(traces, tag: str, tokens: int, layer: int = 1, fracs=(0.01, 0.05)) -> list[str]:
    ids, bounds, total, _ = tr.load(traces, tag, tokens, layer)
    order3 = tr.order3(traces, tag, tokens, ids, layer)
    passof = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    uniq, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    cnt = counts[inv]
    first = np.zeros(len(ids), bool)
    _, fi = np.unique(ids, return_index=True)
    first[fi] = True
    out = [(f"{tag} {tokens} tokens, accesses {len(ids)}, distinct {len(uniq)}, compulsory share {first.mean():.4f}, "
            f"infinite {1-first.mean():.4f}")]
    for o, m in (("2-gram", ~order3), ("3-gram", order3)):
        out.append(f"  {o}: share of accesses {m.mean():.3f}, infinite hit rate {1-first[m].mean():.4f}")
    prev = np.full(len(ids), -1)   # previous-access distance in passes
    nu = next_use(ids)
    has = nu < len(ids)
    prev[nu[has]] = np.nonzero(has)[0]
    dist = np.where(prev >= 0, passof - passof[np.maximum(prev, 0)], -1)
    for frac in fracs:
        cap = sim.capacity_rows(total, frac)
        bh = belady_mask(ids, cap)
        _, lh = sim.simulate(ids, bounds, cap, score=1, decay_every=1024)
        out.append(f" cap {frac}: belady {bh.mean():.4f}  lfu {lh.mean():.4f}")
        for o, m in (("2g", ~order3), ("3g", order3)):
            out.append(f"   {o}: belady {bh[m].mean():.4f} lfu {lh[m].mean():.4f} infinite {1-first[m].mean():.4f}")
        edges = [1, 2, 4, 16, 64, 256, 1024, 4096, 1 << 20]
        out.append("   reuse distance (passes): share of re-accesses / belady hit / lfu hit")
        for a, b in itertools.pairwise(edges):
            m = (dist >= a) & (dist < b)
            out.append(f"     [{a},{b}): {m.sum()/len(ids):.4f}  belady {bh[m].mean():.3f}  lfu {lh[m].mean():.3f}")
        cedges = [2, 3, 5, 10, 30, 100, 1000, 1 << 30]
        out.append("   trace count of id: share / belady / lfu")
        for a, b in itertools.pairwise(cedges):
            m = (cnt >= a) & (cnt < b)
            out.append(f"     [{a},{b}): {m.sum()/len(ids):.4f}  belady {bh[m].mean():.3f}  lfu {lh[m].mean():.3f}")
    return out

