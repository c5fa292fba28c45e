"""TierStack: a worker's storage tiers, fastest first, and `build_tiers`, the one function that composes
them from a TierConfig.

    device_cache  CacheTier on the model's device (HBM on a GPU): probed at forward entry, every layer
    host_mirror   HostMirror: whole tables of the earliest Engram layers that fit, in pinned host memory
    host_cache    CacheTier in pinned host memory, on the fetch thread (torch ops, never Triton kernels)
    backing       StoreTier (co-located LMDB) or ServiceTier (the memory service): every row, every version

Every table is read at a pinned version (`versions`); `switch` moves one table to a newly published
version in every tier at once (the prefetcher calls it at a step boundary).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.config import EngramConfig
from core.manifest import table_name

from .cache_tier import CacheTier
from .host_mirror import HostMirror
from .row_cache import POLICIES
from .tier import BackingStore, Tier


@dataclass
class TierConfig:
    """Sizes of the tiers above the backing store, in bytes, and the caches' policy."""
    device_cache_bytes: int = 64 << 20   # 64 MiB: 512 K rows of 128 B, ~1/40 of the demo's tables
    host_cache_bytes: int = 0
    host_mirror_bytes: int = 0           # e.g. 2 << 30: the demo's layer 1 (1.23 GiB) in host memory
    policy: str = "lru"

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"--policy must be one of {', '.join(POLICIES)} (got {self.policy!r})")
        for name in ("device_cache_bytes", "host_cache_bytes", "host_mirror_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_bytes', '_mb').replace('_', '-')} must be >= 0")


@dataclass
class TierStack:
    device_cache: CacheTier
    host_mirror: HostMirror | None
    host_cache: CacheTier | None
    backing: BackingStore
    tables: dict[int, str]              # Engram layer -> its table
    versions: dict[str, int]            # table -> the version every tier reads

    def below_device(self) -> list[Tier]:
        """What a device-cache miss reads through, in order."""
        return [t for t in (self.host_mirror, self.host_cache, self.backing) if t is not None]

    def switch(self, table: str, version: int) -> None:
        for tier in (self.device_cache, self.host_mirror, self.host_cache, self.backing):
            if tier is not None:
                tier.switch(table, version)
        self.versions[table] = version

    def close(self) -> None:
        for tier in (self.host_mirror, self.host_cache, self.device_cache, self.backing):
            if tier is not None:
                tier.close()


def build_tiers(cfg: TierConfig, backing: BackingStore, config: EngramConfig, device="cpu",
                progress: bool = True) -> TierStack:
    """The stack over `backing` for every Engram layer of `config`, each table at its published version."""
    tables = {layer: table_name(layer) for layer in config.layer_ids}
    manifests = {t: backing.describe(t, fresh=True) for t in tables.values()}
    versions = {t: m.version for t, m in manifests.items()}
    row_bytes = {t: m.row_bytes for t, m in manifests.items()}
    device = torch.device(device)
    mirror = (HostMirror(cfg.host_mirror_bytes, list(tables.values()), backing, versions,
                         pin_memory=torch.cuda.is_available(), progress=progress)
              if cfg.host_mirror_bytes else None)
    host = (CacheTier("host", cfg.host_cache_bytes, row_bytes, versions, "cpu", cfg.policy, pin_memory=True,
                      kernels=False) if cfg.host_cache_bytes else None)
    return TierStack(CacheTier("device", cfg.device_cache_bytes, row_bytes, versions, device, cfg.policy),
                     mirror, host, backing, tables, versions)
