"""StagedStep: a decode step's Engram rows for a graph-captured forward pass.

A CUDA graph replays fixed kernels on fixed buffers, so nothing inside it may depend on a value the
host has to read first. Each Engram layer's rows come one of three ways:

  an early host-mirrored layer (its whole table in pinned host memory, fewer than HOST_LEAD_BLOCKS
      blocks before it): read by the GPU itself inside the graph, with the row ids the graph's own
      hash made: one gather kernel over PCIe (the pinned table's address is valid on the device), no
      host work, no wait. Its programs wait on PCIe while holding SMs beside the blocks' kernels.
  a later host-mirrored layer: the host takes the step's rows from the mirror into pinned staging
      and the copy engine moves them up while the blocks before the layer compute; the graph
      gathers them from device memory. No SM waits on PCIe.
  other layers: planned on the host, per step and in layer order, while the GPU runs the blocks
      before the layer: the step's tokens (copied back after sampling) -> NgramHasher on numpy ->
      row ids [B * C] -> dedup -> a probe of the device cache's *index*, which lives on the host
      during decode (a RowCache holding no rows) -> the misses read from the tiers below into
      pinned staging, their victims chosen -> the plan copied up on a copy stream:
          loc      [U]  each distinct row's cache slot, or -1 - its index in the staged rows
          inverse  [N]  each token-column's distinct row
          staged   [N, row_bytes]  the rows read below (the first M of them)
          slots    [N]  where staged row k goes in the device cache (the trash slot past M)
      Inside the graph, from those static buffers: the staged rows written into their slots, every
      token-column's row gathered from the cache or the staging (fp8 decoded on the way); the main
      stream waits for the layer's copy only where the layer starts.

The index makes the same decisions as the device cache's own probe and insert (it is a RowCache,
the same code on CPU tensors), so hit rates and rows equal the eager path's. `begin` takes the index
over from the device cache and `end` hands it back, so prefill (eager, on the device) and decode
share one cache.
"""
from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch

from kernels import use_triton

from core.row_format import RowFormat

from . import host_index
from .row_cache import RowCache
from .tier import fetch

logger = logging.getLogger("engram_memory")

# A mirrored layer is staged by the host when at least this many blocks come before it. The host's
# part (the previous step's tokens are in, numpy hash 0.4 ms, an 8,192-row take from the mirror and
# a 1 MiB copy up: ~1 ms on the H200's host) must end before the blocks before the layer do (~0.85 ms
# a block for the 1.35B model at batch 512): 4 blocks leave 3x margin. Layer 1 (one block) is read by
# the GPU; its zero-copy read costs ~0.1 ms of the blocks' SMs, layer 15's cost ~0.3 ms (issue 16).
HOST_LEAD_BLOCKS = 4


class StagedStep:
    def __init__(self, prefetcher, batch: int, host_lead_blocks: int | None = None):
        p = self.p = prefetcher
        lead = HOST_LEAD_BLOCKS if host_lead_blocks is None else host_lead_blocks
        self.layers, self.device = p.layers, p.device
        cols = p.hasher.config.num_columns
        self.n = n = batch * cols                      # token-columns per layer and step (T = 1)
        mirror = self.mirror = p.tiers.host_mirror
        row_format = self.row_format = RowFormat(p.hasher.config.row_dtype, p.hasher.config.head_dim)
        mirrored = {layer for layer in self.layers if mirror is not None and mirror.holds(p.tables[layer])}
        self.direct = {layer: layer in mirrored and layer < lead  # read by the GPU (zero-copy)
                       and _readable(mirror.data[p.tables[layer]], row_format, self.device) for layer in self.layers}
        self.from_mirror = {layer for layer in mirrored if not self.direct[layer]}  # staged by the host
        self.planned = [layer for layer in sorted(self.layers) if not self.direct[layer]]  # the host's layers
        self.cached = [layer for layer in self.planned if layer not in self.from_mirror]  # ... with an index
        self.arange = torch.arange(n, device=self.device)
        self.mirror_ptrs = self._mirror_ptrs()
        cuda = self.device.type == "cuda"
        pinned = dict(pin_memory=cuda)
        dev = dict(device=self.device)
        L = len(self.layers)
        self.hash_stack = torch.zeros(L, batch, 1, cols, dtype=torch.int64, **dev)   # the layers' input
        self.hash_host = torch.zeros(L, batch, 1, cols, dtype=torch.int64, **pinned)
        self.hash = {layer: self.hash_stack[i] for i, layer in enumerate(self.layers)}  # one view per layer
        self.buffers, self.host, self.index = {}, {}, {}
        for layer in self.planned:
            rb = p.row_bytes[p.tables[layer]]
            self.buffers[layer] = {"staged": torch.zeros(n, rb, dtype=torch.uint8, **dev)}
            if layer in self.cached:
                cache = p.tiers.device_cache.caches[p.tables[layer]]
                # before the first plan: gathers read slot 0 and writes go to the trash slot (harmless)
                self.buffers[layer].update(loc=torch.zeros(n, dtype=torch.int64, **dev),
                                           inverse=torch.zeros(n, dtype=torch.int64, **dev),
                                           slots=torch.full((n,), cache.trash, dtype=torch.int64, **dev))
            self.host[layer] = {k: torch.empty_like(v, device="cpu", **pinned) for k, v in self.buffers[layer].items()}
        self.copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self.read_stream = torch.cuda.Stream(self.device) if cuda else None   # the mirror reads
        self.read_done = {layer: torch.cuda.Event() for layer in self.layers} if cuda else {}
        self.copied = {layer: torch.cuda.Event() if cuda else None for layer in self.layers}

    # ---- host side ------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Take over the device caches' index (one copy down per table) for a run of decode steps.
        The host copies are made once, pinned, and reused by every run: the copies are async
        (each direction took ~5 ms a run on the H200 from fresh pageable tensors)."""
        for layer in self.cached:
            cache = self._cache(layer)
            if layer not in self.index:
                self.index[layer] = RowCache(cache.capacity_bytes, cache.row_bytes, "cpu", cache.policy, cache.ways,
                                             cache.decay_every, pin_memory=True, kernels=False, rows=False)
            self.index[layer].load_index(cache, non_blocking=True)
        if self.cached and self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the host reads the index next

    def end(self) -> None:
        """Hand the index back to the device caches (after the last step's rows were written). The
        copies up run async on the current stream, before anything later there reads the cache; the
        host index is not touched again until the next begin, whose copies down queue after them."""
        for layer in self.cached:
            self._cache(layer).load_index(self.index[layer], non_blocking=True)

    def forget(self, layer: int) -> None:
        """A new table version was switched to: the device cache dropped its rows, so does the index."""
        if layer in self.index:
            self.index[layer].clear()

    def plan(self, i: int, layer: int, row_ids: np.ndarray, hash_ids: np.ndarray) -> list[float]:
        """Stage layer `layer`'s rows for ids [B, 1, C] (the host hasher's) and copy the plan up; the
        main stream waits for it before the layer's piece of the graph. Returns the seconds spent in
        the dedup, the index, reading below and copying up."""
        t0 = time.perf_counter()
        p, host, table = self.p, self.host[layer], self.p.tables[layer]
        version = p.tiers.versions[table]
        ids = torch.from_numpy(row_ids.reshape(-1))
        self.hash_host[i].copy_(torch.from_numpy(hash_ids))
        if layer in self.from_mirror:  # every token-column's row, in order: no index, no dedup
            fetch(table, ids, host["staged"], p.tiers.below_device(), version)
            p.rows_below_device[layer] += len(ids)
            t1 = time.perf_counter()
            self._copy_up(i, layer, {"staged": len(ids)})
            return [0.0, 0.0, t1 - t0, time.perf_counter() - t1]
        index = self.index[layer]
        unique, inverse = torch.unique(ids, return_inverse=True)
        tu = time.perf_counter()
        hit, slot, slots = host_index.plan(index, unique)   # probe, victims of the misses, release
        miss_at = (~hit).nonzero().squeeze(1)
        miss = unique[miss_at]
        u, m = len(unique), len(miss)
        t1 = time.perf_counter()
        fetch(table, miss, host["staged"][:m], p.tiers.below_device(), version)
        t2 = time.perf_counter()
        slot[miss_at] = -1 - torch.arange(m)
        host["loc"][:u] = slot
        host["inverse"].copy_(inverse)
        host["slots"][:m] = slots
        host["slots"][m:] = index.trash
        p.rows_below_device[layer] += m
        t3 = time.perf_counter()
        self._copy_up(i, layer, {"staged": m, "loc": u, "inverse": self.n, "slots": self.n})
        return [tu - t0, t1 - tu + t3 - t2, t2 - t1, time.perf_counter() - t3]

    def _copy_up(self, i: int, layer: int, counts: dict) -> None:
        """The step's hash of layer i and the first counts[name] rows of each plan buffer."""
        dev, host = self.buffers[layer], self.host[layer]
        stream = self.copy_stream  # no wait for the main stream: the caller synchronized with the previous
        # step's end (its sampled tokens) before planning, so every earlier read of these buffers is done
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            self.hash_stack[i].copy_(self.hash_host[i], non_blocking=True)
            for name, count in counts.items():
                dev[name][:count].copy_(host[name][:count], non_blocking=True)
        if stream is not None:
            self.copied[layer].record(stream)
            torch.cuda.current_stream(self.device).wait_event(self.copied[layer])

    def _cache(self, layer: int) -> RowCache:
        return self.p.tiers.device_cache.caches[self.p.tables[layer]]

    def _mirror_ptrs(self) -> dict:
        return {layer: self.mirror.data[self.p.tables[layer]].data_ptr() for layer in self.layers if self.direct[layer]}

    def mirror_moved(self) -> bool:
        """A mirrored table was copied anew (a new version): the graph holds the old address."""
        return self._mirror_ptrs() != self.mirror_ptrs

    # ---- device side (captured) -----------------------------------------------------------------------
    def set_device_hash(self, hash_ids: torch.Tensor, row_ids: torch.Tensor, dtype: torch.dtype) -> None:
        """The graph's own hash of the step's tokens (piece 0): the mirrored layers' ids, whose rows it
        starts reading at once, on a second stream, while the first blocks compute (on CUDA)."""
        self.dev_hash = {layer: hash_ids[i] for i, layer in enumerate(self.layers)}
        self.mirror_ptrs = self._mirror_ptrs()
        main = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        if main is not None:
            self.read_stream.wait_stream(main)
        self.mirrored = {}
        for i, layer in sorted(enumerate(self.layers), key=lambda x: x[1]):  # the earliest layer's rows first
            if self.direct[layer]:
                with torch.cuda.stream(self.read_stream) if main is not None else contextlib.nullcontext():
                    self.mirrored[layer] = self._read_mirror(layer, row_ids[i].reshape(-1), dtype)
                if main is not None:  # one event per layer: a layer waits for its own rows only
                    self.read_done[layer].record(self.read_stream)

    def _read_mirror(self, layer: int, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The GPU reads the pinned host table itself (zero-copy, over PCIe)."""
        table = self.mirror.data[self.p.tables[layer]]
        if not use_triton(ids):
            return self.row_format.decode_torch(table.index_select(0, ids.cpu()), dtype)
        from kernels.gather import gather_rows
        return gather_rows(table, table[:0], ids, None, self.row_format.row_dtype, self.row_format.head_dim,
                           dtype, rows_per_program=16)

    def hash_ids(self, layer: int) -> torch.Tensor:
        return self.dev_hash[layer] if self.direct[layer] else self.hash[layer]

    def embeddings(self, layer: int, hash_ids: torch.Tensor, row_format, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, C, head_dim]: the staged plan's rows, from static buffers only."""
        if hash_ids is not self.hash_ids(layer):
            raise RuntimeError(f"Engram layer {layer}: pass step.hash_ids(layer) to the layer")
        shape = (*hash_ids.shape, row_format.head_dim)
        if self.direct[layer]:  # read from the mirror at the step's start (set_device_hash)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).wait_event(self.read_done[layer])
            return self.mirrored[layer].view(shape)
        b = self.buffers[layer]
        if layer in self.from_mirror:  # row k of the staging is token-column k's
            if use_triton(b["staged"]):
                from kernels.gather import gather_rows
                return gather_rows(b["staged"], b["staged"][:0], self.arange, None, row_format.row_dtype,
                                   row_format.head_dim, dtype).view(shape)
            return row_format.decode_torch(b["staged"], dtype).view(shape)
        data = self._cache(layer).data
        data.index_copy_(0, b["slots"], b["staged"])   # the misses into their victims' slots
        if use_triton(data):
            from kernels.gather import gather_rows
            out = gather_rows(data, b["staged"], b["loc"], b["inverse"], row_format.row_dtype,
                              row_format.head_dim, dtype)
        else:
            loc = b["loc"][b["inverse"]]
            rows = torch.where((loc >= 0)[:, None], data[loc.clamp(min=0)], b["staged"][(-1 - loc).clamp(min=0)])
            out = row_format.decode_torch(rows, dtype)
        return out.view(shape)


def _readable(table: torch.Tensor, row_format: RowFormat, device) -> bool:
    """Whether the device can read a pinned host table itself: always on CPU; on CUDA, a one-row
    gather from it (Triton takes a pinned tensor's address as a device address under unified
    addressing). If not, the host stages the layer's rows from the mirror: correct, no SM waits."""
    if device.type != "cuda" or not use_triton(torch.empty(0, device=device)):
        return True
    from kernels.gather import gather_rows
    try:
        last = torch.tensor([len(table) - 1], device=device)
        got = gather_rows(table, table[:0], last, torch.zeros(1, dtype=torch.int64, device=device),
                          row_format.row_dtype, row_format.head_dim, torch.float32)
        if torch.equal(got.cpu(), row_format.decode_torch(table[-1:], torch.float32)):
            return True
        raise RuntimeError("a row read from the device differs from the host's")
    except Exception as e:  # noqa: BLE001 - whatever the driver says, the host path is the answer
        logger.warning("the GPU cannot read the pinned host mirror (%s); its layers are staged by the host", e)
        return False
