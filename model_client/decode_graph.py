"""DecodeGraph: one decode step of a fixed batch as CUDA graphs, with the Engram data path inside.

A decode step at batch 512 is ~1,000 small kernels; launched one by one from Python the GPU waits on
the host. Captured once and replayed, the step costs one launch per piece. Everything a step reads
lives in static buffers: the tokens and positions (written by the previous step's argmax inside the
graph), the KV caches and conv states (the Runner's, reused every run), the lookback of the hasher.

  local tables   one graph for the whole step: embed, hash on the device (no range check: the ids
                 are the hasher's, local_step.py), the blocks, the head, argmax.
  remote tables  the graph hashes on the device too; an early layer whose table is in the host
                 mirror reads it over PCIe inside the graph (staged_step.py). The other layers are
                 planned on the host (staged from the mirror, or probed in the device cache's index
                 and read below), so the step is cut before each of them: pieces [0, c1), [c1, c2), ...
                 Piece 0 is launched first; then the host waits for the previous step's tokens
                 (copied back right after its argmax), hashes them on numpy and, layer by layer,
                 stages the rows and launches the piece that starts at that layer. The GPU runs
                 piece 0 meanwhile and waits only where such a layer needs its rows.

Without CUDA (or graphs=False) the same pieces run eagerly in the same order: the logic the CI tests.
Timing per step (CUDA events): each piece's GPU time, and the gaps before pieces 1.. (the exposed wait).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .hasher import LookbackState
from .local_step import LocalStep
from .staged_step import StagedStep


class DecodeGraph:
    def __init__(self, model, hasher, state: dict, lookback: LookbackState, batch: int, prefetcher=None,
                 graphs: bool | None = None):
        self.model, self.hasher, self.state, self.lookback = model, hasher, state, lookback
        self.device = model.head.weight.device
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        self.layers = list(hasher.config.layer_ids)
        self.vocab = hasher.tokenizer.vocab_size  # the model's head is wider than the tokenizer
        self.tokens = torch.zeros(batch, 1, dtype=torch.int64, device=self.device)
        self.positions = torch.zeros(batch, 1, dtype=torch.int64, device=self.device)
        blocks = len(model.blocks)
        if prefetcher is None:
            self.staged, self.bounds = None, [(0, blocks)]
            self.backends = {layer: model.blocks[layer].engram.multi_head_embedding.embedding for layer in self.layers}
        else:
            self.prefetcher, self.staged = prefetcher, StagedStep(prefetcher, batch)
            cuts = self.staged.planned  # a piece ends before each layer the host plans
            self.bounds = list(zip([0, *cuts], [*cuts, blocks]))
            self.tokens_host = torch.zeros(batch, 1, dtype=torch.int64, pin_memory=self.device.type == "cuda")
            self.tokens_ready = torch.cuda.Event() if self.device.type == "cuda" else None
        self.pieces: list[torch.cuda.CUDAGraph] = []
        self.events: list[list] = []       # per step: [start, end of piece 0, start of piece 1, end, ...]
        self.host_s: list[list] = []       # per step (remote): the host's stages, s

    # ---- the step's ops (captured) ----------------------------------------------------------------------
    def _piece(self, k: int) -> None:
        first, stop = self.bounds[k]
        if k == 0:
            self.keys = self.positions[:, 0] + 1   # each row attends to its own length
            self.x = self.model.embed_tokens(self.tokens, self.positions)
            hash_ids, row_ids = self.hasher.hash_and_rows(self.tokens, self.lookback, validate=False)
            if self.staged is None:
                self.rows_step = LocalStep(self.layers, hash_ids, row_ids, self.backends)
            else:  # the mirrored layers read with these ids; the host hashes the others itself
                self.staged.set_device_hash(hash_ids, row_ids, self.model.head.weight.dtype)
                self.rows_step = self.staged
            self.engram_ids = {layer: self.rows_step.hash_ids(layer) for layer in self.layers}
        self.x = self.model.run_blocks(self.x, first, stop, self.positions, self.state, self.engram_ids, None,
                                       self.rows_step, self.keys)
        if k == len(self.bounds) - 1:
            self.logits = self.model.logits(self.x)
            self.tokens.copy_(self.logits[:, :self.vocab].argmax(dim=-1, keepdim=True))
            self.positions.add_(1)

    def capture(self, warm_up: bool = True) -> None:
        """Warm up (kernel compilation, cuBLAS handles) and capture. The warm-up runs a step on the
        buffers as they are, so capture before the run's state is set (Runner.run does); a capture
        again (a mirrored table moved) needs no warm-up and changes nothing."""
        if not self.graphs or self.pieces:
            return
        main, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for k in range(len(self.bounds) if warm_up else 0):
                self._piece(k)
        main.wait_stream(side)
        pool = None   # the pieces share one memory pool: they are captured and replayed in the same order
        for k in range(len(self.bounds)):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._piece(k)
            pool = graph.pool()
            self.pieces.append(graph)
        torch.cuda.synchronize(self.device)

    def _launch(self, k: int) -> None:
        if self.graphs:
            self.pieces[k].replay()
        else:
            self._piece(k)

    # ---- a run of steps ---------------------------------------------------------------------------------
    def begin(self, tokens: torch.Tensor, positions: torch.Tensor) -> None:
        """First step's inputs (tokens [b] from the prefill, positions [b]); rows past b stay padding."""
        t0 = time.perf_counter()
        b = len(tokens)
        self.tokens.fill_(self.hasher.config.pad_id)
        self.positions.zero_()
        self.tokens[:b, 0], self.positions[:b, 0] = tokens, positions
        self.events, self.host_s = [], []
        if self.staged is not None:
            self.host_lookback = LookbackState(self.lookback.ids.cpu().numpy().copy())
            self.tokens_host.copy_(self.tokens)
            self.staged.begin()
            # the host index's CPU ops on one thread: 16 intra-op threads beside the service's processes
            # made them slower, not faster (issue 16's notes)
            self._threads = torch.get_num_threads()
            torch.set_num_threads(1)
        self.begin_s = time.perf_counter() - t0

    def step(self) -> None:
        """One decode step; its logits and next tokens are in self.logits and self.tokens."""
        if self.staged is not None:
            self._step_boundary()
        timed = self.graphs
        events = [_event() for _ in range(2 * len(self.bounds))] if timed else []
        if timed:
            events[0].record()
        self._launch(0)
        if timed:
            events[1].record()
        if self.staged is not None and self.staged.planned:
            self._stage_and_launch(events)
        self.events.append(events)

    def _step_boundary(self) -> None:
        """New table versions, at most every version_check_s: the GPU is drained first (the old rows
        may still be read), and a mirrored table copied anew is captured again at its new address."""
        p, staged = self.prefetcher, self.staged
        for layer in self.layers:  # the graph read every row of the mirrored layers from the mirror
            if staged.direct[layer]:
                p.rows_below_device[layer] += staged.n
                p.tiers.host_mirror.rows_served += staged.n
                table = p.tables[layer]
                p.tiers.host_mirror.rows_by_table[table] = p.tiers.host_mirror.rows_by_table.get(table, 0) + staged.n
        if not p.refresh_due():
            return
        if self.graphs:
            torch.cuda.synchronize(self.device)
        if p.maybe_refresh():
            for layer in self.layers:
                staged.forget(layer)
            if self.graphs and staged.mirror_moved():
                self.pieces = []
                self.capture(warm_up=False)

    def _stage_and_launch(self, events: list) -> None:
        t0 = time.perf_counter()
        if self.tokens_ready is not None:
            self.tokens_ready.synchronize()            # the previous step has ended: its tokens are here
        host = [time.perf_counter() - t0]              # host seconds: the wait for the tokens, the hash,
        p = self.prefetcher                            # then each layer's dedup / index / read below / copy up
        if p.maybe_refresh():
            for layer in self.layers:
                self.staged.forget(layer)
        ids = self.tokens_host.numpy()
        t0 = time.perf_counter()
        hash_ids, row_ids = self.hasher.hash_and_rows(ids, self.host_lookback, validate=False)
        host.append(time.perf_counter() - t0)
        for k, layer in enumerate(self.staged.planned, start=1):
            i = self.layers.index(layer)
            host += self.staged.plan(i, layer, np.ascontiguousarray(row_ids[i]), np.ascontiguousarray(hash_ids[i]))
            if events:
                events[2 * k].record()                 # after the wait for this layer's rows
            self._launch(k)
            if events:
                events[2 * k + 1].record()
        self.host_s.append(host)
        if self.tokens_ready is not None:
            self.tokens_host.copy_(self.tokens, non_blocking=True)
            self.tokens_ready.record()
        else:
            self.tokens_host.copy_(self.tokens)

    def end(self) -> None:
        t0 = time.perf_counter()
        if self.staged is not None:
            if self.tokens_ready is not None:
                self.tokens_ready.synchronize()
            self.staged.end()
            torch.set_num_threads(self._threads)
        self.end_s = time.perf_counter() - t0

    def timings(self) -> dict:
        """Medians over the run's steps, ms: step (first launch to last end), pieces' GPU time, gaps."""
        if not self.events:
            return {}
        torch.cuda.synchronize(self.device)
        steps = np.array([[a.elapsed_time(b) for a, b in zip(ev[:-1], ev[1:])] for ev in self.events])
        step_ms = np.array([ev[0].elapsed_time(ev[-1]) for ev in self.events])
        host = {"host_ms": (np.median(np.array(self.host_s), axis=0) * 1e3).tolist()} if self.host_s else {}
        return {**host, "step_ms": float(np.median(step_ms)), "mean_step_ms": float(step_ms.mean()),
                "begin_ms": 1e3 * self.begin_s, "end_ms": 1e3 * self.end_s, "pieces_ms": np.median(steps[:, 0::2], axis=0).tolist(),
                "gaps_ms": np.median(steps[:, 1::2], axis=0).tolist(), "exposed_wait_ms": float(
                    np.median(steps[:, 1::2].sum(axis=1)))}


def _event():
    return torch.cuda.Event(enable_timing=True)

