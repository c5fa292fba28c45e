"""The benchmark tables: the demo geometry's layer 1 (10,344,164 rows) stored with 256 B rows
(float32 x 64, the demo's: 2.5 GiB) and with 160 B rows (bfloat16 x 80, the paper models' head dim:
1.5 GiB). Tables this size, not toy ones, decide how much TLB and cache misses cost a gather."""
from __future__ import annotations

from pathlib import Path

from memory_service.checkpoint import RandomRows
from memory_service.loader import load_layer
from memory_service.store import TableStore
from model_client import EngramConfig

CONFIGS = {
    256: EngramConfig(),                                              # the demo preset, layer 1
    160: EngramConfig(n_embed_per_ngram=640, row_dtype="bfloat16"),  # same rows, 80 bf16 values
}


def build(db: str | Path, progress: bool = True) -> dict:
    """Create (or reuse) one store per row size; {row_bytes: (store path, manifest)}."""
    out = {}
    for row_bytes, cfg in CONFIGS.items():
        assert cfg.row_bytes == row_bytes
        path = Path(db) / f"rows{row_bytes}"
        store = TableStore(path, bulk=True)
        try:
            if not store.current_version("layer1"):
                load_layer(store, cfg, 1, RandomRows(0, 1, cfg.head_dim), "bench", 0, progress=progress)
            out[row_bytes] = (str(path), store.manifest("layer1"))
        finally:
            store.close()
    return out
