"""Step: one forward pass's Engram rows, in flight from forward entry until each layer reads them.

Per layer a LayerPlan records what the probe of the device cache found: the layer's distinct row ids,
where each token's id is among them (`inverse`), the cache slots of the hits (pinned until read), the
positions of the misses and their next announced use. The misses are read below the device cache
on the fetch thread; when the layer asks (`rows` or `embeddings`), the step waits for that layer only
and settles the plan: misses inserted into the device cache, the hits' pins released. A step changes
the device cache only through its LayerPlans (probe, then settle).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kernels import use_triton

from .row_cache import RowCache
from .tier import fetch

if TYPE_CHECKING:
    from .prefetcher import Prefetcher


@dataclass
class LayerPlan:
    table: str
    cache: RowCache                  # the layer's device cache
    unique: torch.Tensor             # distinct row ids [U]
    inverse: torch.Tensor            # each token-column's index into unique
    slot: torch.Tensor               # cache slot of each unique id (hits pinned; misses: the trash slot)
    hit_at: torch.Tensor             # positions in unique of the hits
    miss_at: torch.Tensor            # ... and of the misses
    miss_next_use: torch.Tensor | None  # the misses' next announced use (lookahead policy), or None

    @classmethod
    def probe(cls, table: str, cache: RowCache, row_ids: torch.Tensor, lookahead, layer: int) -> "LayerPlan":
        """Deduplicate one layer's ids and probe its device cache, pinning the hits until they are read."""
        unique, inverse = torch.unique(row_ids.reshape(-1), return_inverse=True)
        upcoming = lookahead.next_use(layer, unique, cache.tick + 1)  # announced later uses
        hit, slot = cache.lookup(unique, pin=True, next_use=upcoming)
        hit_at, miss_at = hit.nonzero().squeeze(1), (~hit).nonzero().squeeze(1)  # syncs
        miss_next_use = None if upcoming is None else upcoming[miss_at]
        return cls(table, cache, unique, inverse, slot, hit_at, miss_at, miss_next_use)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.unique, self.inverse, self.slot, self.hit_at, self.miss_at, self.miss_next_use)
                if t is not None]

    def insert_misses(self, miss_rows: torch.Tensor) -> None:
        """A full set's misses are served from miss_rows instead of being cached."""
        self.cache.insert(self.unique[self.miss_at], miss_rows, next_use=self.miss_next_use)

    def settle(self, miss_rows: torch.Tensor) -> None:
        """After the layer's rows are assembled: cache the misses, release the hits' pins (misses
        point at the trash slot)."""
        self.insert_misses(miss_rows)
        self.cache.release(self.slot)


class CacheGate:
    """A step's hold on one layer's device cache, on CUDA, where the probes run on the fetch thread:
    the next step's probe of that cache waits until this step's settle is enqueued (the host) and
    done (the GPU). So a step may start (hash, read, copy up) while the one before still computes,
    and each cache still sees probe, settle, probe, settle, in step order: the decisions of one
    step after the other."""

    def __init__(self):
        self.enqueued, self.event = threading.Event(), torch.cuda.Event()

    def open(self) -> None:
        """On the main stream, after the settle."""
        self.event.record()
        self.enqueued.set()

    def release(self) -> None:
        """Abandoned: nothing to wait for (waiting on an event never recorded returns at once)."""
        self.enqueued.set()

    def wait(self, stream, layer: int, timeout_s: float = 300.0) -> None:
        if not self.enqueued.wait(timeout_s):  # a step whose layer nobody read (Step.wait_all reads them)
            raise RuntimeError(f"Engram layer {layer}: the step before never settled its rows in the device cache; "
                               "read every layer of a step, or call prefetcher.abandon()")
        stream.wait_event(self.event)


class Step:
    def __init__(self, prefetcher: "Prefetcher", hash_ids: torch.Tensor, row_ids: torch.Tensor):
        self.p, self.hash_stack, self.row_stack = prefetcher, hash_ids, row_ids
        self.hash = {layer: hash_ids[i] for i, layer in enumerate(prefetcher.layers)}  # one view per layer
        self.plans: dict[int, LayerPlan] = {}   # CPU: probed at entry; CUDA: on the fetch thread
        self.futures, self.direct, self.gates = {}, {}, {}
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
                before = prefetcher.gates.get(layer)  # the step before's hold on this layer's cache
                self.gates[layer] = prefetcher.gates[layer] = CacheGate()
                self.futures[layer] = prefetcher.pool.submit(self._prepare, i, layer, ready, before)
            return
        for i, layer in todo:
            self.plans[layer] = self._probe(i, layer)
        for layer, plan in self.plans.items():  # the first layer's rows first, at this step's version
            self.futures[layer] = prefetcher.pool.submit(self._read_below, plan.table, plan.unique[plan.miss_at].cpu(),
                                                         layer, prefetcher.tiers.versions[plan.table])

    def _probe(self, i: int, layer: int) -> LayerPlan:
        table = self.p.tables[layer]
        cache = self.p.tiers.device_cache.caches[table]
        return LayerPlan.probe(table, cache, self.row_stack[i], self.p.lookahead, layer)

    def _prepare(self, i: int, layer: int, ready, before: CacheGate | None
                 ) -> tuple[LayerPlan, torch.Tensor, "torch.cuda.Event"]:
        """Fetch thread, CUDA: probe, read the misses below and copy them up on the side stream;
        (the layer's plan, its missing rows on the device, an event marking both done)."""
        side, main = self.p.side_stream, torch.cuda.current_stream(self.row_stack.device)
        with torch.cuda.stream(side):
            side.wait_event(ready)
            if before is not None:
                before.wait(side, layer)
            plan = self._probe(i, layer)
            below = self._read_below(plan.table, plan.unique[plan.miss_at].cpu(), layer,
                                     self.p.tiers.versions[plan.table])
            miss_rows = below.to(self.row_stack.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        for t in (*plan.tensors(), miss_rows):  # made on the side stream, used on the main one
            t.record_stream(main)
        return plan, miss_rows, done

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
        return self.hash[layer]

    def row_ids(self, layer: int) -> torch.Tensor:
        return self.row_stack[self.p.layers.index(layer)]

    def rows(self, layer: int) -> torch.Tensor:
        """uint8 [B, T, columns, row_bytes] on the device; waits only for this layer's rows."""
        if layer in self.direct:
            self.p.exposed_wait_s[layer].append(self.direct_wait)
            rows = self.direct.pop(layer)
            return rows.view(*self.row_ids(layer).shape, rows.shape[1])
        plan, miss_rows = self._arrived(layer)
        cache = plan.cache
        rows = torch.empty(len(plan.unique), cache.row_bytes, dtype=torch.uint8, device=cache.device)
        rows.index_copy_(0, plan.hit_at, cache.gather(plan.slot[plan.hit_at]))
        rows.index_copy_(0, plan.miss_at, miss_rows)
        plan.settle(miss_rows)
        self._open(layer)
        return rows[plan.inverse].view(*self.row_ids(layer).shape, cache.row_bytes)

    def embeddings(self, layer: int, hash_ids: torch.Tensor, row_format, dtype: torch.dtype) -> torch.Tensor:
        """The layer's rows decoded to `dtype`, [B, T, columns, head_dim], for `hash_ids` (which must
        be this step's: `hash_ids(layer)`). On CUDA one Triton kernel gathers them from the cache
        slots (hits) and the fetched rows (misses), dequantizing on the way, with no
        [B, T, columns, row_bytes] intermediate; elsewhere `rows` + RowFormat."""
        if not self.pending(layer):
            raise RuntimeError(f"Engram layer {layer}: this step's rows were read already; start a step "
                               "(prefetcher.start(input_ids)) for every forward pass")
        mine = self.hash_ids(layer)  # the same tensor: no check needed; another one: compared (one sync)
        if hash_ids is not mine and not torch.equal(hash_ids.to(mine.device), mine):
            raise RuntimeError(f"Engram layer {layer} asked for other rows than the step prefetched: "
                               "pass step.hash_ids(layer) to the layer")
        if layer in self.direct or not use_triton(self.row_stack):
            return row_format.decode_torch(self.rows(layer), dtype)
        from kernels.gather import gather_rows
        plan, miss_rows = self._arrived(layer)
        slot = plan.slot
        loc = slot.index_copy(0, plan.miss_at, -1 - torch.arange(len(plan.miss_at), device=slot.device))
        plan.insert_misses(miss_rows)  # before the gather: the hits are pinned, never victims
        out = gather_rows(plan.cache.data, miss_rows, loc, plan.inverse, row_format.row_dtype, row_format.head_dim,
                          dtype)
        plan.cache.release(slot)
        self._open(layer)
        return out.view(*self.row_ids(layer).shape, row_format.head_dim)

    def _open(self, layer: int) -> None:
        if layer in self.gates:
            self.gates.pop(layer).open()

    def release_gates(self) -> None:
        for gate in self.gates.values():
            gate.release()
        self.gates = {}

    def _arrived(self, layer: int) -> tuple[LayerPlan, torch.Tensor]:
        """(the layer's plan, its missing rows on the device), once the rows have arrived; the
        exposed wait is the time spent here."""
        t0 = time.perf_counter()
        got = self.futures.pop(layer).result()
        self.p.exposed_wait_s[layer].append(time.perf_counter() - t0)
        if isinstance(got, tuple):  # prepared on the side stream: the main stream waits for it there
            plan, miss_rows, done = got
            torch.cuda.current_stream(miss_rows.device).wait_event(done)
        else:
            plan = self.plans.pop(layer)
            miss_rows = got.to(self.row_stack.device, non_blocking=True)
        return plan, miss_rows

    def wait_all(self) -> None:
        """Consume the layers nobody read (e.g. a forward pass that stopped early)."""
        for layer in [*self.futures, *self.direct]:
            self.rows(layer)
