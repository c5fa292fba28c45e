"""StoreTier: the co-located backing store, the service's LMDB environment opened read-only in this
process (a worker on the service's host: no RPC, the same vectorized gather as the server)."""
from __future__ import annotations

import numpy as np
import torch

from core.manifest import TableManifest
from core.reader import StoreReader
from core.store import TableStore


class StoreTier:
    name = "lmdb"

    def __init__(self, db: str):
        self.store = TableStore(db, readonly=True)
        self.reader = StoreReader(self.store)

    def describe(self, table: str, version: int = 0, fresh: bool = False) -> TableManifest:
        return self.store.manifest(table, version)  # every call reads the newest transaction

    def get_many(self, table: str, ids, out, version: int) -> torch.Tensor:
        ids_np, out_np = as_numpy(ids), as_numpy(out)
        with self.reader.snapshot(fresh=bool(version)) as snap:
            snap.view(table, version).gather_into(ids_np, out_np)  # BadRowIds for an id outside
        return torch.ones(len(ids_np), dtype=torch.bool)

    def put_many(self, table: str, ids, rows, version: int) -> None:
        raise TypeError("the LMDB tier is read-only: tables change through `engram-memory load`")

    def switch(self, table: str, version: int) -> None:
        """Nothing to do: every version is in the store."""

    def close(self) -> None:
        self.reader.close()
        self.store.close()


def as_numpy(x) -> np.ndarray:
    """A CPU tensor's memory as numpy (no copy), or the array itself."""
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
