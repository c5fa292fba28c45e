"""The benchmark tables: the demo geometry's layer 1 (10,344,164 rows) stored with 256 B rows
(float32 x 64, the demo's: 2.5 GiB) and with 160 B rows (bfloat16 x 80, the paper models' head dim:
1.5 GiB). Tables this size, not toy ones, decide how much TLB and cache misses cost a gather."""
from __future__ import annotations

import shutil
from pathlib import Path

from core import row_check
from core.reader import StoreReader
from core.store import TableStore
from memory_service.checkpoint import RandomRows
from memory_service.loader import load_layer
from model_client import EngramConfig

CONFIGS = {
    256: EngramConfig(),                                              # the demo preset, layer 1
    160: EngramConfig(n_embed_per_ngram=640, row_dtype="bfloat16"),  # same rows, 80 bf16 values
}
# --table-size small: ~1.2M rows (primes near 75,000 instead of 640,000 per head): 290 + 180 MiB,
# built in seconds; for quick looks, not for the figures (a small table fits the CPU caches better)
SMALL = dict(engram_vocab_size=[75_000, 75_000])
SIZES = ("demo", "small")


def _stale(path: Path) -> bool:
    """A store written before chunk maps existed (its reader reads every chunk to place it, and the
    map's pages end up 4 KiB-mapped) or before per-row checksums (it is not served): either would
    not measure what the service does today."""
    if not (path / "data.mdb").is_file():
        return False
    store = TableStore(path, readonly=True)
    try:
        if not store.current_version("layer1"):
            return False
        if store.manifest("layer1").row_check != row_check.FORMAT:
            return True
        with StoreReader(store, huge_pages="off").snapshot() as snap:
            return snap.view("layer1", 0).chunks_read > 0
    finally:
        store.close()


def build(db: str | Path, progress: bool = True, size: str = "demo") -> dict:
    """Create (or reuse) one store per row size; {row_bytes: (store path, manifest)}."""
    if size not in SIZES:
        raise ValueError(f"table size must be one of {', '.join(SIZES)} (got {size!r})")
    out = {}
    for row_bytes, cfg in CONFIGS.items():
        assert cfg.row_bytes == row_bytes
        if size == "small":
            cfg = cfg.replace(**SMALL)
        path = Path(db) / f"rows{row_bytes}" if size == "demo" else Path(db) / f"rows{row_bytes}-{size}"
        if _stale(path):
            shutil.rmtree(path)
        store = TableStore(path, bulk=True)
        try:
            if not store.current_version("layer1"):
                load_layer(store, cfg, 1, RandomRows(0, 1, cfg.head_dim), "bench", 0, progress=progress)
            out[row_bytes] = (str(path), store.manifest("layer1"))
        finally:
            store.close()
    return out
