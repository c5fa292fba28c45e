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

from kernels import use_triton

from .hasher import LookbackState, NgramHasher
from .memory_client import MemoryServiceError
from .row_cache import NO_USE
from .tier import fetch
from .tier_stack import TierStack

_TICKS = 1 << 22  # announced ticks are kept as id * _TICKS + tick: row ids up to 2**41
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
        self.future: dict[int, torch.Tensor] = {}  # per layer: sorted id * _TICKS + tick of announced uses
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
        (fresh sequences, e.g. the prefill groups of a batch of prompts). With the lookahead policy
        the device cache keeps rows those passes will read until they have read them."""
        if self.tiers.device_cache.caches and next(iter(self.tiers.device_cache.caches.values())).policy != "lookahead":
            return
        self.future = {}
        for k, ids in enumerate(batches, start=1):
            stacked = self.hasher.row_ids_stacked(self.hasher.hash_stacked(ids.to(self.device)))
            for i, layer in enumerate(self.layers):
                cache = self.tiers.device_cache.caches[self.tables[layer]]
                unique = torch.unique(stacked[i].reshape(-1))
                when = cache.tick + k  # each forward pass ticks every layer's cache once
                cache.announce(unique, when)
                self.future.setdefault(layer, []).append(unique * _TICKS + when)
        self.future = {layer: torch.sort(torch.cat(keys)).values for layer, keys in self.future.items()}

    def next_use(self, layer: int, ids: torch.Tensor, after: int) -> torch.Tensor | None:
        """Each id's first announced use after tick `after` (NO_USE if none); None without announcements."""
        keys = self.future.get(layer) if self.future else None
        if keys is None:
            return None
        at = torch.searchsorted(keys, ids * _TICKS + after + 1).clamp(max=len(keys) - 1)
        found = keys[at]
        return torch.where(found // _TICKS == ids, found % _TICKS, NO_USE)

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
            self.future = {}  # announcements were made for the old rows' ticks; harmless, but stale
            self.switches.append((table, pinned, manifest.version))

    def start(self, input_ids: torch.Tensor, state: LookbackState | None = None, lengths=None) -> "Step":
        """Hash, probe and launch the fetches of one forward pass; the step becomes `current`."""
        if time.monotonic() - self._checked_at >= self.version_check_s:
            self.refresh_versions()
        hash_ids, row_ids = self.hasher.hash_and_rows(input_ids.to(self.device), state, lengths)
        self.current = Step(self, hash_ids, row_ids)
        return self.current

    def abandon(self) -> None:
        """Forget a forward pass that failed half-way: nothing is in flight any more, so no row
        stays pinned for it."""
        if self.current is not None:  # let running probes finish: they pin rows
            wait([f for f in self.current.futures.values() if not f.cancel()])
        self.current = None
        for cache in self.tiers.device_cache.caches.values():
            cache.pins.zero_()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.tiers.close()


class Step:
    def __init__(self, prefetcher: Prefetcher, hash_ids: torch.Tensor, row_ids: torch.Tensor):
        self.p, self.hash_stack, self.row_stack = prefetcher, hash_ids, row_ids
        self.parts, self.futures, self.direct = {}, {}, {}
        mirror = prefetcher.tiers.host_mirror
        direct = [i for i, layer in enumerate(prefetcher.layers) if mirror is not None
                  and mirror.holds(prefetcher.tables[layer]) and row_ids[i].numel() <= prefetcher.direct_rows]
        if direct:
            self._read_direct(direct)
        todo = [(i, layer) for i, layer in enumerate(prefetcher.layers) if layer not in self.direct]
        if prefetcher.side_stream is not None:
            # On CUDA everything after the hash (unique, probe, compaction, the miss ids' copy, the
            # fetch, the rows' copy up) runs on the fetch thread and a side stream: its syncs wait
            # there while the model's first blocks are already enqueued. `ready`: the hash and the
            # previous step's inserts are done.
            ready = torch.cuda.Event()
            ready.record()
            row_ids.record_stream(prefetcher.side_stream)  # read there, freed with the step
            for i, layer in todo:  # the first layer's rows first
                self.futures[layer] = prefetcher.pool.submit(self._prepare, i, layer, ready)
            return
        for i, layer in todo:
            self.parts[layer] = self._probe(i, layer)
        for layer, (table, unique, _, _, _, miss_at, _) in self.parts.items():  # the first layer's rows first
            self.futures[layer] = prefetcher.pool.submit(self._read_below, table, unique[miss_at].cpu(), layer,
                                                         prefetcher.tiers.versions[table])  # this step's version

    def _probe(self, i: int, layer: int) -> tuple:
        """Deduplicate one layer's ids and probe its device cache (pinning the hits)."""
        table = self.p.tables[layer]
        unique, inverse = torch.unique(self.row_stack[i].reshape(-1), return_inverse=True)
        cache = self.p.tiers.device_cache.caches[table]
        upcoming = self.p.next_use(layer, unique, cache.tick + 1)  # announced later uses
        hit, slot = cache.lookup(unique, pin=True, next_use=upcoming)  # pinned until read
        hit_at, miss_at = hit.nonzero().squeeze(1), (~hit).nonzero().squeeze(1)  # syncs
        return table, unique, inverse, slot, hit_at, miss_at, None if upcoming is None else upcoming[miss_at]

    def _prepare(self, i: int, layer: int, ready) -> tuple:
        """Fetch thread, CUDA: probe, read the misses below and copy them up on the side stream;
        (the probe's part, the missing rows on the device, an event marking both done)."""
        side, main = self.p.side_stream, torch.cuda.current_stream(self.row_stack.device)
        with torch.cuda.stream(side):
            side.wait_event(ready)
            part = self._probe(i, layer)
            table, unique, miss_at = part[0], part[1], part[5]
            below = self._read_below(table, unique[miss_at].cpu(), layer, self.p.tiers.versions[table])
            miss_rows = below.to(self.row_stack.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        for t in (*part[1:], miss_rows):  # made on the side stream, used on the main one
            if t is not None:
                t.record_stream(main)
        return part, miss_rows, done

    def _read_direct(self, direct: list[int]) -> None:
        """Every row of the given layers (indices into layers) from the host mirror, copied to the
        device: one sync for all of them, no cache. The time it takes is the layers' exposed wait."""
        t0 = time.perf_counter()
        ids = self.row_stack[direct].cpu()
        cuda = self.row_stack.is_cuda
        for k, i in enumerate(direct):
            layer = self.p.layers[i]
            table = self.p.tables[layer]
            rows = torch.empty(ids[k].numel(), self.p.row_bytes[table], dtype=torch.uint8, pin_memory=cuda)
            self.p.tiers.host_mirror.get_many(table, ids[k].reshape(-1), rows, self.p.tiers.versions[table])
            self.p.rows_below_device[layer] += len(rows)
            self.direct[layer] = rows.to(self.row_stack.device, non_blocking=True)
        self.direct_wait = (time.perf_counter() - t0) / len(direct)

    def _read_below(self, table: str, miss: torch.Tensor, layer: int, version: int) -> torch.Tensor:
        rows = torch.empty(len(miss), self.p.row_bytes[table], dtype=torch.uint8,
                           pin_memory=torch.cuda.is_available())
        fetch(table, miss, rows, self.p.tiers.below_device(), version)
        self.p.rows_below_device[layer] += len(miss)
        return rows

    def pending(self, layer: int) -> bool:
        """Whether this step holds rows of `layer` nobody has read yet."""
        return layer in self.futures or layer in self.direct

    def hash_ids(self, layer: int) -> torch.Tensor:
        """Per-sub-table indices [B, T, columns] of one layer: the Engram module's input."""
        return self.hash_stack[self.p.layers.index(layer)]

    def row_ids(self, layer: int) -> torch.Tensor:
        return self.row_stack[self.p.layers.index(layer)]

    def rows(self, layer: int) -> torch.Tensor:
        """uint8 [B, T, columns, row_bytes] on the device; waits only for this layer's rows."""
        if layer in self.direct:
            self.p.exposed_wait_s[layer].append(self.direct_wait)
            rows = self.direct.pop(layer)
            return rows.view(*self.row_ids(layer).shape, rows.shape[1])
        (table, unique, inverse, slot, hit_at, miss_at, miss_upcoming), cache, miss_rows = self._arrived(layer)
        rows = torch.empty(len(unique), cache.row_bytes, dtype=torch.uint8, device=cache.device)
        rows.index_copy_(0, hit_at, cache.gather(slot[hit_at]))
        rows.index_copy_(0, miss_at, miss_rows)
        cache.insert(unique[miss_at], miss_rows, next_use=miss_upcoming)  # a full set's misses: from miss_rows
        cache.release(slot)                        # the hits' pins (misses point at the trash slot)
        return rows[inverse].view(*self.row_ids(layer).shape, cache.row_bytes)

    def embeddings(self, layer: int, row_format, dtype: torch.dtype) -> torch.Tensor:
        """The layer's rows decoded to `dtype`, [B, T, columns, head_dim]. On CUDA one Triton kernel
        gathers them from the cache slots (hits) and the fetched rows (misses), dequantizing on the
        way, with no [B, T, columns, row_bytes] intermediate; elsewhere `rows` + RowFormat."""
        if layer in self.direct or not use_triton(self.row_stack):
            return row_format.decode_torch(self.rows(layer), dtype)
        from kernels.gather import gather_rows
        (table, unique, inverse, slot, hit_at, miss_at, miss_upcoming), cache, miss_rows = self._arrived(layer)
        loc = slot.index_copy(0, miss_at, -1 - torch.arange(len(miss_at), device=slot.device))
        cache.insert(unique[miss_at], miss_rows, next_use=miss_upcoming)  # hits are pinned: never victims
        out = gather_rows(cache.data, miss_rows, loc, inverse, row_format.row_dtype, row_format.head_dim, dtype)
        cache.release(slot)
        return out.view(*self.row_ids(layer).shape, row_format.head_dim)

    def _arrived(self, layer: int) -> tuple:
        """(the probe's part, the device cache, this layer's missing rows on the device), once the
        rows have arrived; the exposed wait is the time spent here."""
        t0 = time.perf_counter()
        got = self.futures.pop(layer).result()
        self.p.exposed_wait_s[layer].append(time.perf_counter() - t0)
        if isinstance(got, tuple):  # prepared on the side stream: the main stream waits for it there
            part, miss_rows, done = got
            torch.cuda.current_stream(miss_rows.device).wait_event(done)
        else:
            part = self.parts.pop(layer)
            miss_rows = got.to(self.row_stack.device, non_blocking=True)
        return part, self.p.tiers.device_cache.caches[part[0]], miss_rows

    def wait_all(self) -> None:
        """Consume the layers nobody read (e.g. a forward pass that stopped early)."""
        for layer in [*self.futures, *self.direct]:
            self.rows(layer)
