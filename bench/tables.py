"""The benchmark tables: one Engram layer stored with 256 B rows (float32 x 64, the demo's) and one
with 160 B rows (bfloat16 x 80, the paper's head dim), each about 4.1M rows (1.0 GB and 0.66 GB)."""
from __future__ import annotations

from pathlib import Path

from memory_service.checkpoint import RandomRows
from memory_service.loader import load_layer
from memory_service.store import TableStore
from model_client import EngramConfig

# engram_vocab_size 256,000 x 2 orders x 8 heads = 16 sub-tables of ~256k rows = 4.1M rows per layer
CONFIGS = {
    256: EngramConfig(engram_vocab_size=[256_000] * 2, n_embed_per_ngram=512, layer_ids=[1]),
    160: EngramConfig(engram_vocab_size=[256_000] * 2, n_embed_per_ngram=640, layer_ids=[2],
                      row_dtype="bfloat16"),
}


def table_for(row_bytes: int) -> str:
    return f"layer{CONFIGS[row_bytes].layer_ids[0]}"


def build(db: str | Path, progress: bool = True) -> dict:
    """Create (or reuse) the store; {row_bytes: manifest}."""
    store = TableStore(db, bulk=True)
    try:
        out = {}
        for row_bytes, cfg in CONFIGS.items():
            assert cfg.row_bytes == row_bytes
            layer = cfg.layer_ids[0]
            if store.current_version(table_for(row_bytes)):
                out[row_bytes] = store.manifest(table_for(row_bytes))
                continue
            out[row_bytes] = load_layer(store, cfg, layer, RandomRows(0, layer, cfg.head_dim), "bench", 0,
                                        progress=progress)
        return out
    finally:
        store.close()
