"""Lookahead: the rows announced work will read, so the device cache keeps them until it has.

The prefetcher announces admitted work (token ids [B, T] of the next forward passes, in the order
they will start: e.g. the prefill groups of a batch of prompts). Each pass ticks every layer's cache
once, so pass k of the announcement reads its rows at tick `cache.tick + k`. The cache hears of each
row's uses (RowCache.announce) and evicts rows with no known use first, then the ones needed
farthest ahead; at a probe the step asks `next_use` for its misses' next announced use after this
pass, which the cache keeps with the row when it inserts it. The lookahead and tinylfu policies listen.
"""
from __future__ import annotations

import torch

from .cache_tier import CacheTier
from .hasher import NgramHasher
from .row_cache import NO_USE

TICKS = 1 << 22  # announced uses are kept as id * TICKS + tick: row ids up to 2**41, ticks to 2**22


class Lookahead:
    def __init__(self, hasher: NgramHasher, device_cache: CacheTier, tables: dict[int, str]):
        self.hasher, self.device_cache, self.tables = hasher, device_cache, tables
        self.layers = list(tables)
        self.future: dict[int, torch.Tensor] = {}  # per layer: sorted id * TICKS + tick of announced uses
        caches = list(device_cache.caches.values())
        self.enabled = bool(caches) and caches[0].policy in ("lookahead", "tinylfu")

    def announce(self, batches: list[torch.Tensor]) -> None:
        if not self.enabled:
            return
        future: dict[int, list[torch.Tensor]] = {}
        for k, ids in enumerate(batches, start=1):
            stacked = self.hasher.row_ids_stacked(self.hasher.hash_stacked(ids.to(self.device_cache.device)))
            for i, layer in enumerate(self.layers):
                cache = self.device_cache.caches[self.tables[layer]]
                unique = torch.unique(stacked[i].reshape(-1))
                when = cache.tick + k  # each forward pass ticks every layer's cache once
                cache.announce(unique, when)
                future.setdefault(layer, []).append(unique * TICKS + when)
        self.future = {layer: torch.sort(torch.cat(keys)).values for layer, keys in future.items()}

    def next_use(self, layer: int, ids: torch.Tensor, after: int) -> torch.Tensor | None:
        """Each id's first announced use after tick `after` (NO_USE if none); None without announcements."""
        keys = self.future.get(layer) if self.future else None
        if keys is None:
            return None
        at = torch.searchsorted(keys, ids * TICKS + after + 1).clamp(max=len(keys) - 1)
        found = keys[at]
        return torch.where(found // TICKS == ids, found % TICKS, NO_USE)

    def forget(self) -> None:
        self.future = {}
