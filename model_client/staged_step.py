"""StagedStep: a decode step's Engram rows for a graph-captured forward pass, planned on the host.

A CUDA graph replays fixed kernels on fixed buffers, so nothing inside it may depend on a value the
host has to read first. The decode step splits the work where the data is:

  host (per step, per Engram layer, in layer order, while the GPU runs the blocks before it):
      the step's tokens (copied back after sampling) -> NgramHasher on numpy -> row ids [B * C];
      host-mirrored layer: every row from the mirror into pinned staging (no cache: as Step's
      direct read); other layers: dedup, then probe the device cache's *index*, which lives on the
      host during decode (a RowCache holding no rows), read the misses from the tiers below into
      pinned staging, choose their victims; then copy the plan up on a copy stream:
          loc      [U]  each distinct row's cache slot, or -1 - its index in the staged rows
          inverse  [N]  each token-column's distinct row
          staged   [N, row_bytes]  the rows read below (the first M of them)
          slots    [N]  where staged row k goes in the device cache (the trash slot past M)
  device (inside the graph, from those static buffers): write the staged rows into their slots,
      gather every token-column's row from the cache or the staging (decoding fp8 on the way),
      then the gate; the main stream waits for the layer's copy only where the layer starts.

The index makes the same decisions as the device cache's own probe and insert (it is a RowCache:
the same code, on CPU tensors), so hit rates and rows equal the eager path's. `begin` takes the
index over from the device cache and `end` hands it back, so prefill (eager, on the device) and
decode share one cache.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from kernels import use_triton

from .row_cache import RowCache
from .tier import fetch


class StagedStep:
    def __init__(self, prefetcher, batch: int):
        p = self.p = prefetcher
        self.layers, self.device = p.layers, p.device
        cols = p.hasher.config.num_columns
        self.n = n = batch * cols                      # token-columns per layer and step (T = 1)
        mirror = p.tiers.host_mirror
        self.direct = {layer: mirror is not None and mirror.holds(p.tables[layer]) for layer in self.layers}
        cuda = self.device.type == "cuda"
        pinned = dict(pin_memory=cuda)
        dev = dict(device=self.device)
        L = len(self.layers)
        self.hash_stack = torch.zeros(L, batch, 1, cols, dtype=torch.int64, **dev)   # the layers' input
        self.hash_host = torch.zeros(L, batch, 1, cols, dtype=torch.int64, **pinned)
        self.hash = {layer: self.hash_stack[i] for i, layer in enumerate(self.layers)}  # one view per layer
        self.buffers, self.host, self.index = {}, {}, {}
        for layer in self.layers:
            rb = p.row_bytes[p.tables[layer]]
            cache = p.tiers.device_cache.caches[p.tables[layer]]
            # before the first plan: gathers read slot 0 and writes go to the trash slot (harmless)
            self.buffers[layer] = {"loc": torch.zeros(n, dtype=torch.int64, **dev),
                                   "inverse": torch.zeros(n, dtype=torch.int64, **dev),
                                   "staged": torch.zeros(n, rb, dtype=torch.uint8, **dev),
                                   "slots": torch.full((n,), cache.trash, dtype=torch.int64, **dev)}
            self.host[layer] = {k: torch.empty_like(v, device="cpu", **pinned) for k, v in self.buffers[layer].items()}
            if self.direct[layer]:  # every token-column reads its own staged row
                for where in (self.buffers[layer], self.host[layer]):
                    where["loc"].copy_(-1 - torch.arange(n))
                    where["inverse"].copy_(torch.arange(n))
        self.copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self.copied = {layer: torch.cuda.Event() if cuda else None for layer in self.layers}

    # ---- host side ------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Take over the device caches' index (one copy down per table) for a run of decode steps."""
        for layer in self.layers:
            cache = self._cache(layer)
            if not self.direct[layer]:
                self.index[layer] = RowCache(cache.capacity_bytes, cache.row_bytes, "cpu", cache.policy,
                                             cache.ways, cache.decay_every, kernels=False, rows=False)
                self.index[layer].load_index(cache)

    def end(self) -> None:
        """Hand the index back to the device caches (after the last step's rows were written)."""
        for layer, index in self.index.items():
            self._cache(layer).load_index(index)
        self.index = {}

    def forget(self, layer: int) -> None:
        """A new table version was switched to: the device cache dropped its rows, so does the index."""
        if layer in self.index:
            self.index[layer].clear()

    def plan(self, i: int, layer: int, row_ids: np.ndarray, hash_ids: np.ndarray) -> list[float]:
        """Stage layer `layer`'s rows for ids [B, 1, C] (the host hasher's) and copy the plan up; the
        main stream waits for it before the layer's piece of the graph. Returns the seconds spent in
        the index, reading below and copying up."""
        t0 = time.perf_counter()
        p, host, table = self.p, self.host[layer], self.p.tables[layer]
        version = p.tiers.versions[table]
        ids = torch.from_numpy(row_ids.reshape(-1))
        self.hash_host[i].copy_(torch.from_numpy(hash_ids))
        if self.direct[layer]:
            t1 = time.perf_counter()
            p.tiers.host_mirror.get_many(table, ids, host["staged"], version)
            m = u = self.n
            t2 = time.perf_counter()
        else:
            index = self.index[layer]
            unique, inverse = torch.unique(ids, return_inverse=True)
            hit, slot = index.lookup(unique, pin=True)
            miss_at = (~hit).nonzero().squeeze(1)
            miss = unique[miss_at]
            u, m = len(unique), len(miss)
            t1 = time.perf_counter()
            fetch(table, miss, host["staged"][:m], p.tiers.below_device(), version)
            t2 = time.perf_counter()
            _, slots = index.insert(miss, None)
            index.release(slot)
            slot[miss_at] = -1 - torch.arange(m)
            host["loc"][:u] = slot
            host["inverse"].copy_(inverse)
            host["slots"][:m] = slots
            host["slots"][m:] = index.trash
        p.rows_below_device[layer] += m
        t3 = time.perf_counter()
        self._copy_up(i, layer, u, m)
        return [t1 - t0 + t3 - t2, t2 - t1, time.perf_counter() - t3]

    def _copy_up(self, i: int, layer: int, u: int, m: int) -> None:
        dev, host = self.buffers[layer], self.host[layer]
        stream = self.copy_stream  # no wait for the main stream: the caller synchronized with the previous
        # step's end (its sampled tokens) before planning, so every earlier read of these buffers is done
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            self.hash_stack[i].copy_(self.hash_host[i], non_blocking=True)
            dev["staged"][:m].copy_(host["staged"][:m], non_blocking=True)
            if not self.direct[layer]:
                dev["loc"][:u].copy_(host["loc"][:u], non_blocking=True)
                dev["inverse"].copy_(host["inverse"], non_blocking=True)
                dev["slots"].copy_(host["slots"], non_blocking=True)
        if stream is not None:
            self.copied[layer].record(stream)
            torch.cuda.current_stream(self.device).wait_event(self.copied[layer])

    def _cache(self, layer: int) -> RowCache:
        return self.p.tiers.device_cache.caches[self.p.tables[layer]]

    # ---- device side (captured) -----------------------------------------------------------------------
    def hash_ids(self, layer: int) -> torch.Tensor:
        return self.hash[layer]

    def embeddings(self, layer: int, hash_ids: torch.Tensor, row_format, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, C, head_dim]: the staged plan's rows, from static buffers only."""
        if hash_ids is not self.hash_ids(layer):
            raise RuntimeError(f"Engram layer {layer}: pass step.hash_ids(layer) to the layer")
        b = self.buffers[layer]
        shape = (*hash_ids.shape, row_format.head_dim)
        if self.direct[layer]:
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

