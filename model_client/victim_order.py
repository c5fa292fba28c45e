"""Victim order: how each RowCache policy ranks a set's resident rows (and tinylfu its misses).

Higher scores are kept. Stamps (ticks) stay below 2**40, so a count shifted by 40 bits ranks first
and recency breaks its ties; announced uses sit above both (lookahead: 2**41 + 2**40 - t; tinylfu:
2**52 - t, the soonest highest). RowCache adds empty (-1) and pinned (2**57) slots and the way index.
"""
from __future__ import annotations

import torch

NO_USE = 1 << 50  # next_use of a row with no known future use
KNOWN = 1 << 52   # tinylfu: an announced use at tick t scores 2**52 - t, above any (estimate << 40 | stamp)


def policy_scores(cache, sets: torch.Tensor) -> torch.Tensor:
    """[S, W]: each set's ways scored by the cache's policy (before empty and pinned slots)."""
    stamp = cache._rows_of(cache.stamp, sets)
    if cache.policy == "lru":
        return stamp
    if cache.policy == "lfu":  # uses first (capped at 2**16), then recency
        return (cache._rows_of(cache.uses, sets).clamp(max=1 << 16) << 40) | stamp
    upcoming = cache._rows_of(cache.next_use, sets)
    known = (upcoming > cache.tick) & (upcoming < NO_USE)
    if cache.policy == "tinylfu":  # announced uses (soonest highest), then estimated reads, recency
        frequent = (cache.sketch.estimate(cache._rows_of(cache.tags, sets)) << 40) | stamp
        return torch.where(known, KNOWN - upcoming, frequent)
    return torch.where(known, (1 << 41) + (1 << 40) - upcoming, stamp)   # lookahead: unknown by recency,
    # then known uses, farthest first


def miss_scores(cache, ids: torch.Tensor, next_use: torch.Tensor | None) -> torch.Tensor:
    """tinylfu's scores of misses [N] as if resident: an announced next use, else (estimate, this tick)."""
    frequent = (cache.sketch.estimate(ids) << 40) | cache.tick
    if next_use is None:
        return frequent
    next_use = next_use.to(cache.device)
    return torch.where(next_use < NO_USE, KNOWN - next_use, frequent)
