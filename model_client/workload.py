"""The serving workload: real text prompts of varied lengths, one prefill, then greedy decode steps.

A Runner drives a DemoModel over it in one of two modes: local tables (the model's Engram layers
hold their tables; hashing happens at forward entry all the same) or remote tables (the prefetcher
hashes, probes the caches and launches the fetches at forward entry). Both modes do the same work
apart from where rows come from, so their tokens/s compare the data path alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from core.corpus import ENGLISH, PACKAGED_SAMPLE, corpus_file, read_lines

from .hasher import LookbackState, NgramHasher


@dataclass
class WorkloadConfig:
    sequences: int = field(default=8, metadata={"help": "sequences in the batch"})
    min_len: int = field(default=100, metadata={"help": "shortest prompt, tokens"})
    max_len: int = field(default=512, metadata={"help": "longest prompt, tokens (lengths are uniform in between)"})
    decode_steps: int = field(default=16, metadata={"help": "greedy decode steps after the prefill"})
    workload_seed: int = field(default=0, metadata={
        "help": "seed of the prompts' lengths and offsets (the worker: -1 takes it from its id, so scaled "
                "workers replay different text; each round adds its number)"})

    def __post_init__(self):
        if self.sequences < 1 or self.decode_steps < 0:
            raise ValueError("WorkloadConfig.sequences must be >= 1 and decode_steps >= 0")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"WorkloadConfig: need 1 <= min_len <= max_len (got {self.min_len}, {self.max_len})")


def make_prompts(tokenizer, wl: WorkloadConfig, corpus=None) -> list[np.ndarray]:
    """Prompts cut from real text (Brown corpus, or the packaged sample), lengths U[min_len, max_len]."""
    path = corpus or corpus_file(ENGLISH) or PACKAGED_SAMPLE
    need = wl.sequences * wl.max_len
    lines, ids = read_lines(path, max_chars=6 * need + 10_000), []
    ids = np.array([i for row in tokenizer.encode_batch(lines) for i in row], dtype=np.int64)
    while len(ids) < need + 1:
        ids = np.concatenate([ids, ids])
    rng = np.random.default_rng(wl.workload_seed)
    lengths = rng.integers(wl.min_len, wl.max_len + 1, size=wl.sequences)
    starts = rng.integers(0, len(ids) - wl.max_len, size=wl.sequences)
    return [ids[s:s + n] for s, n in zip(starts, lengths)]


@dataclass
class RunResult:
    prefill_s: float
    decode_s: float
    prefill_tokens: int
    decode_tokens: int
    logits: list = field(repr=False)      # prefill logits, then one per decode step
    tokens: torch.Tensor = field(repr=False)  # greedy tokens [B, decode_steps]

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else 0.0


class Runner:
    def __init__(self, model, hasher: NgramHasher, prefetcher=None, pad_id: int = 2):
        self.model, self.hasher, self.prefetcher, self.pad_id = model, hasher, prefetcher, pad_id
        self.device = model.head.weight.device

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _forward(self, ids, positions, state, lookback, lengths=None):
        """Forward entry: hash every Engram layer (local tables) or start the prefetch (remote: the
        Engram layers read their rows from the step), then the forward pass."""
        if self.prefetcher is not None:
            step = self.prefetcher.start(ids, lookback, lengths)
            engram_ids = {layer: step.hash_ids(layer) for layer in self.prefetcher.layers}
        else:
            step, stacked = None, self.hasher.hash_stacked(ids, lookback, lengths)
            engram_ids = {layer: stacked[i] for i, layer in enumerate(self.hasher.config.layer_ids)}
        return self.model(ids, positions, state, engram_ids, lengths, step)

    @torch.no_grad()
    def run(self, prompts: list[np.ndarray], decode_steps: int, prefill_batch: int = 0) -> RunResult:
        """Prefill every prompt (in groups of prefill_batch sequences; 0: all at once), then decode
        all sequences together for decode_steps greedy steps."""
        B, T = len(prompts), max(len(p) for p in prompts)
        ids = np.full((B, T), self.pad_id, dtype=np.int64)
        for b, p in enumerate(prompts):
            ids[b, :len(p)] = p
        ids = torch.from_numpy(ids).to(self.device)
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        state = self.model.new_state(B)
        lookback = self.hasher.new_state(B, device=self.device)
        group = prefill_batch or B
        logits = []
        self._sync()
        t0 = time.perf_counter()
        if self.prefetcher is not None:  # the prompts are admitted: tell the cache what is coming
            self.prefetcher.announce([ids[g:g + group, :int(lengths[g:g + group].max())] for g in range(0, B, group)])
        for g in range(0, B, group):  # each group writes its rows of the shared caches and states
            rows = slice(g, g + group)
            n = lengths[rows]
            width = int(n.max())
            part = ids[rows, :width]
            positions = torch.arange(width, device=self.device).expand(len(n), width)
            sub = {"kv": [(k[rows], v[rows]) for k, v in state["kv"]],
                   "conv": {i: c[rows] for i, c in state["conv"].items()}}
            sub_lookback = LookbackState(lookback.ids[rows])
            logits.append(self._forward(part, positions, sub, sub_lookback, n))
        logits = [torch.cat(logits)]
        self._sync()
        prefill_s = time.perf_counter() - t0
        tokens, pos = [], lengths.clone()
        vocab = self.hasher.tokenizer.vocab_size  # the model's head is wider than the tokenizer
        t0 = time.perf_counter()
        for _ in range(decode_steps):
            nxt = logits[-1][:, :vocab].argmax(dim=-1)
            tokens.append(nxt)
            step_ids = nxt[:, None]
            logits.append(self._forward(step_ids, pos[:, None], state, lookback))
            pos += 1
        self._sync()
        decode_s = time.perf_counter() - t0
        return RunResult(prefill_s, decode_s, int(lengths.sum()), B * decode_steps, logits,
                         torch.stack(tokens, 1) if tokens else torch.empty(B, 0))
