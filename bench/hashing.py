"""Hashing throughput (numpy vs torch on this CPU) and compression-table build time.

Batches are sequences of 1,024 real tokens: 4 x 1,024 = 4k and 64 x 1,024 = 64k tokens. Each figure
is the median of `repeats` timed runs after one warm-up; the two libraries alternate within one run
so that machine noise hits both alike.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from core.corpus import ENGLISH, PACKAGED_SAMPLE, corpus_file, read_lines
from core.tokenizer import CompressedTokenizer
from model_client import EngramConfig, NgramHasher

from .report import machine, write_rows


@dataclass
class HashingBenchConfig:
    config: str = field(default="demo", metadata={"help": "EngramConfig preset or JSON file"})
    repeats: int = field(default=20, metadata={"help": "timed runs per figure (median reported)"})
    torch_threads: int = field(default=1, metadata={
        "help": "torch.set_num_threads for the torch runs (1: on 2 shared cores more threads slow "
                "small ops down)"})
    cuda: bool = field(default=False, metadata={
        "help": "also time torch on the GPU (input already on the device, synchronized per run)"})
    out: str = field(default="bench-out/hashing.json", metadata={"help": "JSON output path; bench-out/ is not tracked (the committed figures are in bench/results/)"})

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"HashingBenchConfig.repeats must be >= 1 (got {self.repeats})")
        if self.torch_threads < 1:
            raise ValueError(f"HashingBenchConfig.torch_threads must be >= 1 (got {self.torch_threads})")


def _median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(cfg: HashingBenchConfig) -> int:
    import torch
    torch.set_num_threads(cfg.torch_threads)
    config = EngramConfig.load(cfg.config)
    rows, info = [], machine()

    with tempfile.TemporaryDirectory() as cache:  # cold: no cache; then warm: read back from disk
        import os
        old = os.environ.get("ENGRAM_CACHE_DIR")
        os.environ["ENGRAM_CACHE_DIR"] = cache
        try:
            cold = [_timed(lambda: CompressedTokenizer(config.tokenizer, use_cache=False)) for _ in range(3)]
            CompressedTokenizer(config.tokenizer)  # writes the cache
            warm = [_timed(lambda: CompressedTokenizer(config.tokenizer)) for _ in range(3)]
        finally:
            os.environ.pop("ENGRAM_CACHE_DIR") if old is None else os.environ.__setitem__("ENGRAM_CACHE_DIR", old)
    for mode, times in (("cold", cold), ("cached", warm)):
        rows.append({"bench": "compression_build", "mode": mode, "tokenizer": config.tokenizer,
                     "seconds": statistics.median(times), **info})

    hasher = NgramHasher(config)
    path = corpus_file(ENGLISH) or PACKAGED_SAMPLE
    ids = np.array([i for r in hasher.tokenizer.encode_batch(read_lines(path, 2_000_000)) for i in r])
    for batch in (4, 64):
        tokens = batch * 1024
        reps = -(-tokens // len(ids))  # repeat the text if it is shorter than the batch
        x_np = np.tile(ids, reps)[:tokens].reshape(batch, 1024)
        cases = [("numpy", x_np, None), ("torch", torch.from_numpy(x_np), None)]
        if cfg.cuda:
            cases.append(("torch-cuda", torch.from_numpy(x_np).cuda(), torch.cuda.synchronize))
        for lib, x, sync in cases:
            # on the GPU: no validation (it would sync), and wait for the kernels inside the timing
            call = (lambda: (hasher.hash_stacked(x, validate=False), sync())) if sync else \
                (lambda: hasher.hash_stacked(x))
            seconds = _median_s(call, cfg.repeats)
            rows.append({"bench": "hash", "lib": lib, "batch_tokens": tokens, "layers": len(config.layer_ids),
                         "columns": config.num_columns, "seconds_median": seconds,
                         "tokens_per_s": tokens / seconds, "torch_threads": cfg.torch_threads,
                         "corpus": path.name, **info})
    out = write_rows(rows, cfg.out)
    for r in rows:
        if r["bench"] == "hash":
            print(f"hash  {r['lib']:<10} {r['batch_tokens']:>6} tokens: {r['tokens_per_s']:>12,.0f} tokens/s")
        else:
            print(f"compression build {r['mode']:<7}: {r['seconds']:.3f} s")
    print(f"wrote {out}")
    return 0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
