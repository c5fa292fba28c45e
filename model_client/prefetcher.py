"""Lookahead prefetch: fetch a forward pass's Engram rows while the backbone computes.

At forward entry `start(input_ids)` hashes every Engram layer for the whole batch (prefill chunks and
decode steps alike, with the per-sequence lookback state), deduplicates each layer's row ids on the
device, probes the device cache (pinning the hits) and hands the misses of every layer, in layer
order, to a background thread that reads them from the host cache tier and the backing store. The
backbone meanwhile runs the blocks before the first Engram layer. Inside an Engram layer,
`Step.rows(layer)` waits for that layer's rows only, records the exposed wait, copies them to the
device, inserts them into the device cache and assembles the [B, T, columns] rows. On CUDA the
probe runs on the fetch thread too, on a side stream (`Step._prepare`): its device syncs then never
hold back the main thread, which enqueues the first blocks at once.

Layers whose whole table is in a host mirror (host_mirror.py) read small batches (decode steps)
straight from it at forward entry instead: every row, no cache, one sync (`Step._read_direct`).
"""
from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, wait

import grpc
import torch

from .hasher import LookbackState, NgramHasher
from .lookahead import Lookahead
from .memory_client import MemoryServiceError
from .step import Step
from .tier_stack import TierStack

DIRECT_ROWS = 1 << 14  # rows of one layer per forward read straight from a host mirror (decode of 1,024)
UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

class Prefetcher:
    def __init__(self, hasher: NgramHasher, tiers: TierStack, version_check_s: float = 1.0):
        """tiers: from build_tiers (tier_stack.py); the prefetcher owns them from now on (close())."""
        self.hasher, self.tiers = hasher, tiers
        self.device = tiers.device_cache.device
        self.layers = list(hasher.config.layer_ids)
        self.tables = tiers.tables
        self.row_bytes = {t: cache.row_bytes for t, cache in tiers.device_cache.caches.items()}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engram-prefetch")
        self.current: Step | None = None
        self.in_flight: list[Step] = []    # started, some layer not read yet (prefill runs two at once)
        self.gates: dict = {}              # per layer: the last started step's hold on its cache (step.py)
        self.lookahead = Lookahead(hasher, tiers.device_cache, tiers.tables)
        self.exposed_wait_s: dict[int, list[float]] = defaultdict(list)  # per layer, one per step
        self.rows_below_device: dict[int, int] = defaultdict(int)        # per layer: mirror, host cache, backing
        # Hot reload: every table is read at a pinned version (tiers.versions); at a step boundary, at
        # most every version_check_s, a newly published version is checked against the model's config,
        # every tier switches to it, and the next step reads it.
        self.version_check_s, self._checked_at = version_check_s, time.monotonic()
        # A mirrored layer's small batches (decode: 512 sequences x 16 columns = 8,192 rows) skip the
        # device cache: one index_select from the mirror plus one 1 MiB copy cost less than probing,
        # compacting hits and misses (three syncs) and inserting. Larger ones (prefill) use the cache.
        self.direct_rows = DIRECT_ROWS
        self.side_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.switches: list[tuple[str, int, int]] = []                    # (table, old, new)

    def announce(self, batches: list[torch.Tensor]) -> None:
        """Admitted work: token ids [B, T] of the next forward passes, in the order they will start
        (lookahead.py); with the lookahead policy the device cache keeps rows they will read."""
        self.lookahead.announce(batches)

    def refresh_versions(self) -> None:
        """Switch to newly published table versions (call between forward passes; `start` does,
        at most every version_check_s). A new version built for another config raises, naming the
        field, and nothing changes; an unreachable service is left to the step's reads to report."""
        self._checked_at = time.monotonic()
        for table, pinned in list(self.tiers.versions.items()):
            try:
                manifest = self.tiers.backing.describe(table, fresh=True)
            except MemoryServiceError as e:
                if e.code in UNREACHABLE:
                    continue
                raise
            if manifest.version == pinned:
                continue
            manifest.check_compatible(self.hasher.config, self.hasher.tokenizer.sha256,
                                      self.hasher.compressed_vocab_size)
            self.tiers.switch(table, manifest.version)
            self.lookahead.forget()  # announced for the old rows' ticks: harmless, but stale
            self.switches.append((table, pinned, manifest.version))

    def refresh_due(self) -> bool:
        return time.monotonic() - self._checked_at >= self.version_check_s

    def maybe_refresh(self) -> bool:
        """At a step boundary, at most every version_check_s: switch to new versions; True if any."""
        if not self.refresh_due():
            return False
        before = len(self.switches)
        self.refresh_versions()
        return len(self.switches) > before

    @property
    def overlaps(self) -> bool:
        """Whether a step may start while the one before computes (CUDA: probes on the fetch thread,
        ordered per cache by CacheGates); on CPU a step probes at start, so it must not."""
        return self.side_stream is not None

    def start(self, input_ids: torch.Tensor, state: LookbackState | None = None, lengths=None,
              refresh: bool = True) -> "Step":
        """Hash, probe and launch the fetches of one forward pass; the step becomes `current`.
        refresh=False: no version switch now (a step started ahead, while another is in flight)."""
        if refresh:
            self.maybe_refresh()
        hash_ids, row_ids = self.hasher.hash_and_rows(input_ids.to(self.device), state, lengths)
        self.in_flight = [s for s in self.in_flight if s.futures or s.direct]
        self.current = Step(self, hash_ids, row_ids)
        self.in_flight.append(self.current)
        return self.current

    def abandon(self) -> None:
        """Forget a forward pass that failed half-way: nothing is in flight any more, so no row
        stays pinned for it."""
        for step in self.in_flight:  # no probe waits for a step that will never settle
            step.release_gates()
        for step in self.in_flight:  # let running probes finish: they pin rows
            wait([f for f in step.futures.values() if not f.cancel()])
        self.current, self.in_flight, self.gates = None, [], {}
        for cache in self.tiers.device_cache.caches.values():
            cache.pins.zero_()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.tiers.close()
