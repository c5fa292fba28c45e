"""CacheTier: a row cache per table (row_cache.py) as a tier, on the GPU or in pinned host memory.

The tier's capacity is split evenly across its tables. It holds rows of one version per table: a
switch drops the table's rows, and a read or an offer for another version (a step still in flight
from before the switch) finds nothing and keeps nothing.
"""
from __future__ import annotations

import torch

from .row_cache import CacheStats, RowCache


class CacheTier:
    def __init__(self, name: str, capacity_bytes: int, row_bytes: dict[str, int], versions: dict[str, int],
                 device="cpu", policy: str = "lru", pin_memory: bool = False, ways: int = 16, kernels: bool = True,
                 rows: bool = True, decay_every: int = 1024):
        """rows=False: indexes only (the hit-rate replay counts decisions, bench/serving_replay.py)."""
        self.name, self.device = name, torch.device(device)
        share = capacity_bytes // max(1, len(row_bytes))
        self.caches = {table: RowCache(share, rb, device, policy, ways=ways, pin_memory=pin_memory, kernels=kernels,
                                       rows=rows, decay_every=decay_every)
                       for table, rb in row_bytes.items()}
        self.versions = dict(versions)

    def get_many(self, table: str, ids: torch.Tensor, out: torch.Tensor, version: int) -> torch.Tensor:
        cache = self.caches[table]
        if version != self.versions[table]:
            return torch.zeros(len(ids), dtype=torch.bool)
        hit, slot = cache.lookup(ids)
        at = hit.nonzero().squeeze(1)
        out[at.to(out.device)] = cache.gather(slot[at]).to(out.device)
        return hit

    def put_many(self, table: str, ids: torch.Tensor, rows: torch.Tensor, version: int) -> None:
        if version != self.versions[table]:
            return
        cache = self.caches[table]
        new = ~cache.contains(ids)
        cache.insert(ids.to(cache.device)[new], rows.to(cache.device)[new])

    def switch(self, table: str, version: int) -> None:
        self.caches[table].clear()
        self.versions[table] = version

    def stats(self, table: str | None = None) -> CacheStats:
        """Counters summed over the tier's tables (or of one table)."""
        total = CacheStats()
        for name, cache in self.caches.items():
            if table in (None, name):
                total.add(cache.stats)
        return total

    def close(self) -> None:
        self.caches.clear()
