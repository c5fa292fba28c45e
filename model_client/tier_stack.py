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

from dataclasses import dataclass, field

import torch

from core.config import EngramConfig
from core.manifest import table_name

from .cache_tier import CacheTier
from .host_mirror import HostMirror
from .row_cache import POLICIES
from .tier import BackingStore, Tier


@dataclass
class TierConfig:
    """Sizes of the tiers above the backing store, in MiB, and the caches' policy: a config part of
    the worker and the e2e comparison (flags derived from it)."""
    # 64 MiB: 512 K rows of 128 B, ~1/40 of the demo's two tables
    device_cache_mb: float = field(default=64.0, metadata={"help": "device row cache, MiB (all Engram layers together)"})
    host_cache_mb: float = field(default=0.0, metadata={"help": "pinned host row cache, MiB (0: none)"})
    # e.g. 2048: the demo's layer 1 (1.23 GiB) in host memory
    host_mirror_mb: float = field(default=0.0, metadata={
        "help": "pinned host memory for whole tables of the earliest Engram layers, copied from the service "
                "at start; their decode misses then need no RPC (0: none)"})
    policy: str = field(default="lru", metadata={"help": f"cache policy: {', '.join(POLICIES)}"})

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"--policy must be one of {', '.join(POLICIES)} (got {self.policy!r})")
        if self.device_cache_mb * 2**20 < 1024:
            raise ValueError(f"--device-cache-mb must hold at least 1 KiB (got {self.device_cache_mb})")
        for name in ("host_cache_mb", "host_mirror_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")

    @staticmethod
    def bytes(mb: float) -> int:
        return int(mb * 2**20)


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
    mib = TierConfig.bytes
    mirror = (HostMirror(mib(cfg.host_mirror_mb), list(tables.values()), backing, versions,
                         pin_memory=torch.cuda.is_available(), progress=progress)
              if cfg.host_mirror_mb else None)
    host = (CacheTier("host", mib(cfg.host_cache_mb), row_bytes, versions, "cpu", cfg.policy, pin_memory=True,
                      kernels=False) if cfg.host_cache_mb else None)
    return TierStack(CacheTier("device", mib(cfg.device_cache_mb), row_bytes, versions, device, cfg.policy),
                     mirror, host, backing, tables, versions)
