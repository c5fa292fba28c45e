"""The serving workload: real text prompts of varied lengths, one prefill, then greedy decode steps.

A Runner drives a DemoModel over it in one of two modes: local tables (the model's Engram layers
hold their tables; the hasher runs at forward entry all the same) or remote tables (the prefetcher
hashes, probes the caches and launches the fetches at forward entry). Prefill runs eagerly; decode
runs as CUDA graphs on a GPU (decode_graph.py), eagerly elsewhere. Both modes do the same work apart
from where rows come from, so their tokens/s compare the data path alone.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.corpus import ENGLISH, PACKAGED_SAMPLE, corpus_file, read_lines

from .decode_graph import DecodeGraph
from .hasher import LookbackState, NgramHasher
from .local_step import LocalStep


@dataclass
class WorkloadConfig:
    sequences: int = field(default=8, metadata={"help": "sequences in the batch"})
    min_len: int = field(default=100, metadata={"help": "shortest prompt, tokens"})
    max_len: int = field(default=512, metadata={"help": "longest prompt, tokens (lengths are uniform in between)"})
    decode_steps: int = field(default=16, metadata={"help": "greedy decode steps after the prefill"})
    prompts_from: str = field(default="", metadata={
        "help": "text file the prompts are cut from (default: the shared corpora's Brown, else the packaged sample)"})
    workload_seed: int = field(default=0, metadata={
        "help": "seed of the prompts' lengths and offsets (the worker: -1 takes it from its id, so scaled "
                "workers replay different text; each round adds its number)"})

    def __post_init__(self):
        if self.sequences < 1 or self.decode_steps < 0:
            raise ValueError("WorkloadConfig.sequences must be >= 1 and decode_steps >= 0")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"WorkloadConfig: need 1 <= --min-len <= --max-len (got --min-len {self.min_len}, "
                             f"--max-len {self.max_len})")

        if self.prompts_from and not Path(self.prompts_from).is_file():
            raise ValueError(f"WorkloadConfig.prompts_from: no such file {self.prompts_from!r}")

    def within(self, positions: int) -> "WorkloadConfig":
        """This workload with its prompts cut to fit a model of `positions` positions (a trained
        checkpoint's are fixed): the longest prompt plus the decode steps, and one spare."""
        room = positions - self.decode_steps - 1
        if room < 1:
            raise ValueError(f"--decode-steps {self.decode_steps} leaves no room for a prompt in the model's "
                             f"{positions} positions")
        return dataclasses.replace(self, min_len=min(self.min_len, room), max_len=min(self.max_len, room))


def make_prompts(tokenizer, wl: WorkloadConfig) -> list[np.ndarray]:
    """Prompts cut from real text (--prompts-from, the Brown corpus, or the packaged sample), lines
    kept apart by their newlines, lengths U[min_len, max_len]."""
    path = wl.prompts_from or corpus_file(ENGLISH) or PACKAGED_SAMPLE
    need = wl.sequences * wl.max_len
    lines = read_lines(path, max_chars=6 * need + 10_000)
    ids = np.array([i for row in tokenizer.encode_batch([line + "\n" for line in lines]) for i in row], dtype=np.int64)
    if len(ids) == 0:
        raise ValueError(f"--prompts-from {path}: no text")
    while len(ids) < need + 1:
        ids = np.concatenate([ids, ids])
    rng = np.random.default_rng(wl.workload_seed)
    lengths = rng.integers(wl.min_len, wl.max_len + 1, size=wl.sequences)
    starts = rng.integers(0, len(ids) - wl.max_len, size=wl.sequences)
    return [ids[s:s + n] for s, n in zip(starts, lengths)]


def generated_text(tokenizer, prompts: list[np.ndarray], tokens: torch.Tensor, count: int = 3,
                   context: int = 24) -> list[dict]:
    """The first `count` sequences as text: each prompt's last `context` tokens and what was decoded."""
    return [{"prompt": tokenizer.decode(prompt[-context:]), "continuation": tokenizer.decode(row)}
            for prompt, row in zip(prompts[:count], tokens.cpu().numpy())]


@dataclass
class RunResult:
    prefill_s: float
    decode_s: float
    prefill_tokens: int
    decode_tokens: int
    logits: list = field(repr=False)      # prefill logits, then one per decode step
    tokens: torch.Tensor = field(repr=False)  # greedy tokens [B, decode_steps]
    decode_split: dict = field(default_factory=dict)  # CUDA graphs: medians per step, ms (DecodeGraph.timings)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else 0.0


@dataclass
class PrefillGroup:
    """One prefill forward pass: some sequences' prompts and their views of the shared state."""
    ids: torch.Tensor         # [b, width]
    positions: torch.Tensor   # [b, width]
    lengths: torch.Tensor     # [b]
    width: int                # the longest prompt of the group: the keys its attention reads
    state: dict               # views of the KV caches and conv states of these rows
    lookback: LookbackState


class Runner:
    def __init__(self, model, hasher: NgramHasher, prefetcher=None, pad_id: int = 2, states: dict | None = None,
                 decode_graph: bool | None = None):
        """states: {rows: (model state, lookback)}, reused every run (a decode graph reads them by
        address); runners that alternate may share one dict (the KV caches of 512 sequences of a 1.3B
        model take ~70 GB). decode_graph: decode through DecodeGraph (default: on CUDA, where it is
        captured; True on CPU runs its pieces eagerly)."""
        self.model, self.hasher, self.prefetcher, self.pad_id = model, hasher, prefetcher, pad_id
        self.device = model.head.weight.device
        self.layers = list(hasher.config.layer_ids)
        self.backends = {layer: model.blocks[layer].engram.multi_head_embedding.embedding for layer in self.layers}
        self.states = {} if states is None else states
        self.decode_graph = self.device.type == "cuda" if decode_graph is None else decode_graph
        self.decoders: dict[int, DecodeGraph] = {}

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _start(self, ids, lookback, lengths=None, refresh: bool = True):
        """Hash every Engram layer once (local tables: LocalStep; remote: the prefetcher's Step,
        which also starts the fetches); the Engram layers read their rows from it."""
        if self.prefetcher is not None:
            return self.prefetcher.start(ids, lookback, lengths, refresh)
        return LocalStep(self.layers, *self.hasher.hash_and_rows(ids, lookback, lengths), self.backends)

    def _forward(self, ids, positions, state, lookback, lengths=None, keys=None, step=None):
        """Forward entry (a step started ahead, or one started now)."""
        step = step if step is not None else self._start(ids, lookback, lengths)
        engram_ids = {layer: step.hash_ids(layer) for layer in self.layers}
        return self.model(ids, positions, state, engram_ids, lengths, step, keys)

    def _state(self, rows: int, decode_steps: int):
        """The state for `rows` sequences (and its decode graph, captured before the state is reset)."""
        if rows not in self.states:
            self.states[rows] = (self.model.new_state(rows), self.hasher.new_state(rows, device=self.device))
        state, lookback = self.states[rows]
        decoder = None
        if self.decode_graph and decode_steps:
            decoder = self.decoders.get(rows)
            if decoder is None:
                decoder = self.decoders[rows] = DecodeGraph(self.model, self.hasher, state, lookback, rows,
                                                            self.prefetcher)
                decoder.capture()
        for conv in state["conv"].values():
            conv.zero_()
        lookback.reset(slice(None), self.hasher.pad_id)
        return state, lookback, decoder

    def _group(self, ids, lengths, host_lengths, state, lookback, rows: slice) -> "PrefillGroup":
        width = int(host_lengths[rows].max())
        n = lengths[rows]
        return PrefillGroup(ids[rows, :width], torch.arange(width, device=self.device).expand(len(n), width), n,
                            width, {"kv": [(k[rows], v[rows]) for k, v in state["kv"]],
                                    "conv": {i: c[rows] for i, c in state["conv"].items()}},
                            LookbackState(lookback.ids[rows]))

    @torch.no_grad()
    def run(self, prompts: list[np.ndarray], decode_steps: int, prefill_batch: int = 0) -> RunResult:
        """Prefill every prompt (in groups of prefill_batch sequences; 0: all at once), then decode
        all sequences together for decode_steps greedy steps."""
        B, T = len(prompts), max(len(p) for p in prompts)
        ids = np.full((B, T), self.pad_id, dtype=np.int64)
        for b, p in enumerate(prompts):
            ids[b, :len(p)] = p
        ids = torch.from_numpy(ids).to(self.device)
        host_lengths = np.array([len(p) for p in prompts])    # the groups' widths: no device sync
        lengths = torch.from_numpy(host_lengths).to(self.device)
        rows = 1 << (B - 1).bit_length() if self.decode_graph else B  # a graph per power-of-two bucket
        state, lookback, decoder = self._state(rows, decode_steps)
        group = prefill_batch or B
        logits = []
        self._sync()
        t0 = time.perf_counter()
        if self.prefetcher is not None:  # the prompts are admitted: tell the cache what is coming
            self.prefetcher.announce([ids[g:g + group, :host_lengths[g:g + group].max()] for g in range(0, B, group)])
        # on CUDA the next group's step starts before this group's forward: its hash, probes and reads
        # run while this group computes (each device cache still sees the steps in order: step.py)
        ahead = self.prefetcher is not None and self.prefetcher.overlaps
        parts = [self._group(ids, lengths, host_lengths, state, lookback, slice(g, min(g + group, B)))
                 for g in range(0, B, group)]
        step = None
        for k, part in enumerate(parts):  # each group writes its rows of the shared caches and states
            step = step if step is not None else self._start(part.ids, part.lookback, part.lengths)
            following = (self._start(parts[k + 1].ids, parts[k + 1].lookback, parts[k + 1].lengths, refresh=False)
                         if ahead and k + 1 < len(parts) else None)
            logits.append(self._forward(part.ids, part.positions, part.state, part.lookback, part.lengths,
                                        keys=part.width, step=step))
            step = following
        logits = [torch.cat(logits)]
        self._sync()
        prefill_s = time.perf_counter() - t0
        tokens, pos = [], lengths.clone()
        vocab = self.hasher.tokenizer.vocab_size  # the model's head is wider than the tokenizer
        t0 = time.perf_counter()
        nxt = logits[-1][:, :vocab].argmax(dim=-1)
        if decoder is not None:
            decoder.begin(nxt, pos)
            try:  # a failed read (service down) still hands the cache index back and restores threads
                for _ in range(decode_steps):
                    tokens.append(nxt)
                    decoder.step()
                    logits.append(decoder.logits[:B].clone())
                    nxt = decoder.tokens[:B, 0].clone()
            finally:
                decoder.end()
        else:
            for _ in range(decode_steps):
                tokens.append(nxt)
                logits.append(self._forward(nxt[:, None], pos[:, None], state, lookback))
                pos += 1
                nxt = logits[-1][:, :vocab].argmax(dim=-1)
        self._sync()
        decode_s = time.perf_counter() - t0
        return RunResult(prefill_s, decode_s, int(lengths.sum()), B * decode_steps, logits,
                         torch.stack(tokens, 1) if tokens else torch.empty(B, 0),
                         decoder.timings() if decoder is not None and decoder.graphs else {})
