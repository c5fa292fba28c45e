"""Hit rates as serving produces them: the project's own cache code, driven forward pass by forward pass.

A device cache sees one deduplicated batch of row ids per forward pass and ticks once per pass; what
it knows of the future is what the prefetcher announced when the work was admitted. The replay
drives exactly that code with real text:

  prefill  prompts of `seq_len` tokens are admitted `admit` at a time and prefilled in forward passes
           of `group` prompts. At admission the admitted passes are announced (Lookahead.announce,
           as Prefetcher.announce), then each pass hashes its prompts and runs LayerPlan.probe and
           settle: the CPU Step's path (probe with the announced next uses, hits pinned, misses
           inserted with theirs, pins released).
  decode   `streams` sequences step together, one token each per forward pass; nothing is
           announced. Each pass runs host_index.plan on the layer's cache: what the graph-captured
           decode step does on a GPU (equal to the eager LayerPlan path: tests/model_client).

The caches hold no rows (RowCache(rows=False)): the decisions and counters are those of a cache of
that capacity. Belady's MIN runs on the same passes (each pass's distinct ids in a row, one access
each), the ceiling of any cache of that size under serving's deduplication.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.manifest import table_name
from model_client import host_index
from model_client.cache_tier import CacheTier
from model_client.lookahead import Lookahead
from model_client.row_cache import CacheStats, RowCache
from model_client.step import LayerPlan


@dataclass
class ReplayResult:
    stats: CacheStats               # the cache's own counters: lookups are distinct ids per pass
    passes: list[np.ndarray]        # each pass's distinct row ids, in order (Belady's trace)


class ServingReplay:
    """The device cache of a worker whose capacity is `fraction` of all Engram tables together (split
    evenly between the layers' tables, as the worker's --device-cache-mb is)."""

    def __init__(self, hasher, fraction: float = 0.0, policy: str = "lru", row_bytes: int = 128, ways: int = 16,
                 decay_every: int = 1024, capacity_bytes: int = 0):
        """capacity_bytes, if given, instead of fraction (a worker's --device-cache-mb)."""
        self.hasher, self.layers = hasher, list(hasher.config.layer_ids)
        self.tables = {layer: table_name(layer) for layer in self.layers}
        total = sum(hasher.geometry.rows(layer) for layer in self.layers)
        capacity = capacity_bytes or max(ways * len(self.layers), int(fraction * total)) * row_bytes
        self.tier = CacheTier("device", capacity, {t: row_bytes for t in self.tables.values()},
                              {t: 1 for t in self.tables.values()}, "cpu", policy, ways=ways, kernels=False,
                              rows=False, decay_every=decay_every)
        self.lookahead = Lookahead(hasher, self.tier, self.tables)   # as the Prefetcher's: one for all
        self.passes: dict[int, list[np.ndarray]] = {layer: [] for layer in self.layers}

    def cache(self, layer: int) -> RowCache:
        return self.tier.caches[self.tables[layer]]

    def prefill(self, prompts: np.ndarray, group: int, admit: int) -> None:
        """prompts int64 [N, seq_len], admitted `admit` at a time, prefilled `group` per pass."""
        for a in range(0, len(prompts), admit):
            admitted = torch.from_numpy(prompts[a:a + admit])
            passes = [admitted[g:g + group] for g in range(0, len(admitted), group)]
            lookahead = self.lookahead
            lookahead.announce(passes)   # as Prefetcher.announce: this admission's passes, in order
            for ids in passes:
                _, row_ids = self.hasher.hash_and_rows(ids)
                for i, layer in enumerate(self.layers):
                    plan = LayerPlan.probe(self.tables[layer], self.cache(layer), row_ids[i], lookahead, layer)
                    plan.settle(torch.empty(len(plan.miss_at), 0, dtype=torch.uint8))  # no rows: decisions only
                    self.passes[layer].append(plan.unique.numpy())

    def decode(self, streams: np.ndarray, context: np.ndarray | None = None) -> None:
        """streams int64 [S, steps]: S sequences stepping together, one token each per pass, after
        `context` [S, T] (their prompts, hashed as the lookback; default: none)."""
        T = 0 if context is None else context.shape[1]
        whole = streams if context is None else np.concatenate([context, streams], axis=1)
        _, row_ids = self.hasher.hash_and_rows(whole)   # as stepping: the lookback carries each row
        row_ids = row_ids[:, :, T:]
        for t in range(streams.shape[1]):
            for i, layer in enumerate(self.layers):
                unique = torch.unique(torch.from_numpy(np.ascontiguousarray(row_ids[i, :, t]).reshape(-1)))
                host_index.plan(self.cache(layer), unique)
                self.passes[layer].append(unique.numpy())

    def result(self, layer: int) -> ReplayResult:
        return ReplayResult(self.cache(layer).stats, self.passes[layer])
