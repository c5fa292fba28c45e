"""A real memory service for tests: `engram-memory serve` as a subprocess on a free loopback port,
over a temporary LMDB store filled by the real loader (the `served_store` fixture is in conftest)."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np

from core.row_format import RowFormat
from core.store import TableStore
from core.table_init import seeded_rows
from core.tokenizer import get_compressed_tokenizer
from memory_service.checkpoint import RandomRows
from memory_service.loader import load_layer
from memory_service.process import ServiceProcess, executable
from model_client import EngramConfig, TableGeometry

EXE = executable()
DTYPE_LAYERS = {1: "float32", 2: "bfloat16", 3: "float16", 4: "fp8-e4m3"}


def tiny_config(**changes) -> EngramConfig:
    """4 Engram layers of ~12,000 rows (2 orders x 2 heads of primes near 3,000), head_dim 40:
    rows of 160 B in float32, 80 B in 16-bit, 42 B in fp8 (two scale bytes: blocks of 32 and 8)."""
    base = dict(engram_vocab_size=[3000, 3000], n_embed_per_ngram=80, n_head_per_ngram=2,
                layer_ids=list(DTYPE_LAYERS), hidden_size=32, hc_mult=1)
    base.update(changes)
    return EngramConfig(**base)


def fill_store(path, seed: int = 0, chunk_rows: int = 1024, publish: bool = True, dtypes=None,
               shard: int = 0, shards: int = 1) -> dict:
    """Layer L of tiny_config() stored as dtypes[L] (default DTYPE_LAYERS: one dtype per layer),
    with the DeepSeek-V3 tokenizer's fingerprint (or one shard's rows of it); {layer: manifest}."""
    tokenizer = get_compressed_tokenizer("deepseek-v3")
    store = TableStore(path)
    try:
        out = {}
        for layer, dtype in (dtypes or DTYPE_LAYERS).items():
            cfg = tiny_config(row_dtype=dtype)
            out[layer] = load_layer(store, cfg, layer, RandomRows(seed, layer, cfg.head_dim), tokenizer.sha256,
                                    tokenizer.num_compressed, publish=publish, progress=False, chunk_rows=chunk_rows,
                                    shard=shard, shards=shards)
        return out
    finally:
        store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(ServiceProcess):
    """The real server on a free loopback port, logging next to its store, with metrics on."""

    def __init__(self, db, *flags, workers: int = 2):
        super().__init__(db, "--refresh-ms", "20", *flags, workers=workers, metrics_port=free_port(),
                         log=Path(db).parent / f"serve-{time.monotonic_ns()}.log")


def expected_rows(layer: int, seed: int = 0) -> np.ndarray:
    """All encoded rows of layer L in fill_store(seed=seed), computed without the store."""
    cfg = tiny_config(row_dtype=DTYPE_LAYERS[layer])
    n = TableGeometry.from_config(cfg).rows(layer)
    return RowFormat(cfg.row_dtype, cfg.head_dim).encode(seeded_rows(seed, layer, 0, n, cfg.head_dim))
