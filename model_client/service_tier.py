"""ServiceTier: the memory service as the backing store, through a lookup client: a MemoryClient
(one service) or a ClusterClient (shards and replicas), which both answer describe/lookup/close."""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from core.manifest import TableManifest

from .store_tier import as_numpy


class LookupClient(Protocol):
    def describe(self, table: str, version: int = 0, refresh: bool = False) -> TableManifest: ...

    def lookup(self, table: str, row_ids, version: int = 0, out: np.ndarray | None = None) -> np.ndarray: ...

    def close(self) -> None: ...


class ServiceTier:
    name = "service"

    def __init__(self, client: LookupClient):
        self.client = client

    def describe(self, table: str, version: int = 0, fresh: bool = False) -> TableManifest:
        """fresh=True asks the service now (one DescribeTable call) instead of the client's cache."""
        return self.client.describe(table, version, refresh=fresh)

    def get_many(self, table: str, ids, out, version: int) -> torch.Tensor:
        self.client.lookup(table, as_numpy(ids), version=version, out=as_numpy(out))  # BadRowIds outside
        return torch.ones(len(ids), dtype=torch.bool)

    def put_many(self, table: str, ids, rows, version: int) -> None:
        raise TypeError("the service tier is read-only from a worker: use AdminService or `engram-memory load`")

    def switch(self, table: str, version: int) -> None:
        """Nothing to do: the service holds every version."""

    def close(self) -> None:
        self.client.close()
