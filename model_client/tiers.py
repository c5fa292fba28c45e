"""Storage tiers behind one small batched interface, and the function that composes them.

    get_many(table, ids, out) -> found   distinct int64 ids [N]; rows of found ids written to the
                                         caller's uint8 out [N, row_bytes]; found: bool [N]
                                         (backing stores take version=: 0 is the published one)
    put_many(table, ids, rows)           offer rows to a cache tier (stores are read-only)
    close()

Tiers, fastest first: CacheTier on the GPU (HBM), HostMirror (whole tables of the earliest Engram
layers in pinned host memory, host_mirror.py), CacheTier in pinned host memory, then one backing
store: StoreTier reads the service's LMDB environment directly (a worker on the service's
host, no RPC) or ServiceTier asks the memory service over gRPC. A backing store finds every valid
id or raises; it never returns a zero row for a row that should exist.
"""
from __future__ import annotations

import numpy as np
import torch

from core.reader import StoreReader
from core.store import TableStore

from .row_cache import CacheStats, RowCache


class CacheTier:
    """One RowCache per table, the tier's capacity split evenly across its tables."""

    def __init__(self, name: str, capacity_bytes: int, row_bytes: dict[str, int], device="cpu",
                 policy: str = "lru", pin_memory: bool = False, ways: int = 16, kernels: bool = True):
        self.name = name
        share = capacity_bytes // max(1, len(row_bytes))
        self.caches = {table: RowCache(share, rb, device, policy, ways=ways, pin_memory=pin_memory, kernels=kernels)
                       for table, rb in row_bytes.items()}

    def get_many(self, table: str, ids: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        cache = self.caches[table]
        hit, slot = cache.lookup(ids)
        at = hit.nonzero().squeeze(1)
        out[at.to(out.device)] = cache.gather(slot[at]).to(out.device)
        return hit

    def put_many(self, table: str, ids: torch.Tensor, rows: torch.Tensor) -> None:
        cache = self.caches[table]
        new = ~cache.contains(ids)
        cache.insert(ids.to(cache.device)[new], rows.to(cache.device)[new])

    def stats(self, table: str | None = None) -> CacheStats:
        """Counters summed over the tier's tables (or of one table)."""
        total = CacheStats()
        for name, cache in self.caches.items():
            if table in (None, name):
                total.add(cache.stats)
        return total

    def clear(self, table: str) -> None:
        self.caches[table].clear()

    def close(self) -> None:
        self.caches.clear()


class StoreTier:
    """The co-located read path: the service's LMDB environment opened read-only in this process."""

    name = "lmdb"

    def __init__(self, db: str):
        self.store = TableStore(db, readonly=True)
        self.reader = StoreReader(self.store)

    def row_bytes(self, table: str) -> int:
        return self.store.manifest(table).row_bytes

    def manifest(self, table: str, version: int = 0):
        return self.store.manifest(table, version)

    def version(self, table: str) -> int:
        """The published version now."""
        return self.store.current_version(table)

    def get_many(self, table: str, ids, out, version: int = 0) -> torch.Tensor:
        ids_np, out_np = _numpy(ids), _numpy(out)
        with self.reader.snapshot(fresh=bool(version)) as snap:
            snap.view(table, version).gather_into(ids_np, out_np)
        return torch.ones(len(ids_np), dtype=torch.bool)

    def put_many(self, table: str, ids, rows) -> None:
        raise TypeError("the LMDB tier is read-only: tables change through `engram-memory load`")

    def close(self) -> None:
        self.reader.close()
        self.store.close()


class ServiceTier:
    """The memory service over gRPC."""

    name = "service"

    def __init__(self, client):
        self.client = client

    def row_bytes(self, table: str) -> int:
        return self.client.describe(table).row_bytes

    def manifest(self, table: str, version: int = 0):
        return self.client.describe(table, version)

    def version(self, table: str) -> int:
        """The published version now (one DescribeTable call)."""
        return self.client.describe(table, refresh=True).version

    def get_many(self, table: str, ids, out, version: int = 0) -> torch.Tensor:
        self.client.lookup(table, _numpy(ids), version=version, out=_numpy(out))
        return torch.ones(len(ids), dtype=torch.bool)

    def put_many(self, table: str, ids, rows) -> None:
        raise TypeError("the service tier is read-only from a worker: use AdminService or `engram-memory load`")

    def close(self) -> None:
        self.client.close()


def _numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def fetch(table: str, ids: torch.Tensor, out: torch.Tensor, tiers: list, version: int = 0) -> None:
    """Rows of distinct ids into out, from the first tier holding each; rows found below a cache
    tier are offered to it on the way up. The last tier must be a backing store, read at `version`
    (the caches above it hold rows of that version only: the prefetcher clears them on a switch)."""
    missing = torch.ones(len(ids), dtype=torch.bool)
    for depth, tier in enumerate(tiers):
        todo = missing.nonzero().squeeze(1)
        if len(todo) == 0:
            break
        whole = len(todo) == len(ids)  # the first tier asked: it writes straight into out
        buffer = out if whole and out.device.type == "cpu" else torch.empty(len(todo), out.shape[1], dtype=torch.uint8)
        store = depth == len(tiers) - 1
        asked = ids if whole else ids[todo]
        found = (tier.get_many(table, asked, buffer, version=version) if store
                 else tier.get_many(table, asked, buffer)).cpu()
        if buffer is not out:  # rows the tier did not find are rewritten by a lower tier below
            out[todo[found]] = buffer[found].to(out.device)
        for upper in tiers[:depth]:
            upper.put_many(table, ids[todo[found]], buffer[found])
        missing[todo[found]] = False
    if missing.any():
        raise LookupError(f"table {table}: {int(missing.sum())} rows found in no tier (the last tier must "
                          "be a backing store)")
