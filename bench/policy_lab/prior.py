"""Static priors: per-row access counts of an Engram layer's table counted on a different text.

Sources (under the shared corpora, core.corpus.corpora_dir()):
  gutenberg   every en/gutenberg/*.txt;
  brown_tail, msra_tail  en/brown.txt, zh/msra_news.txt after their first `skip_tokens` tokens (the
              text after the evaluated 1,048,576).
Counted once and kept as prior_<source>_<layer>.npy in the traces directory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FILES = {"gutenberg": "en/gutenberg/*.txt", "brown_tail": "en/brown.txt", "msra_tail": "zh/msra_news.txt"}
_memo: dict = {}


def source_files(source: str) -> list[Path]:
    from core.corpus import corpora_dir
    base = corpora_dir()
    files = sorted(base.glob(FILES[source])) if base else []
    if not files:
        raise FileNotFoundError(f"prior {source!r}: {FILES[source]} not found under the shared corpora "
                                "(set ENGRAM_CORPORA)")
    return files


def prior(source: str, layer: int = 1, traces: str | Path = ".", skip_tokens: int = 1048576) -> np.ndarray:
    """int32 [layer rows]: how often each row of the layer's table is read in `source`."""
    key = (source, layer, str(traces), skip_tokens)
    if key in _memo:
        return _memo[key]
    path = Path(traces) / f"prior_{source}_{layer}.npy"
    if path.exists():
        _memo[key] = np.load(path)
        return _memo[key]
    from bench.hit_rate import HitRateConfig, make_hasher
    from core.corpus import read_lines
    h = make_hasher(HitRateConfig())
    ids = []
    for f in source_files(source):
        lines = read_lines(f)
        ids.append(np.fromiter((i for r in h.tokenizer.encode_batch(lines) for i in r), dtype=np.int64))
    ids = np.concatenate(ids)
    if source.endswith("_tail"):
        ids = ids[skip_tokens:]   # the text after the evaluated first 1,048,576 tokens
    ids = ids[:len(ids) - len(ids) % 1024].reshape(-1, 1024)
    rows = h.geometry.rows(layer)
    counts = np.zeros(rows, np.int64)
    li = h.config.layer_ids.index(layer)
    for s in range(0, len(ids), 64):
        _, r = h.hash_and_rows(ids[s:s + 64])
        counts += np.bincount(r[li].reshape(-1), minlength=rows)
    out = np.minimum(counts, 2**31 - 1).astype(np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    print(f"prior {source} layer {layer}: {ids.size} tokens", flush=True)
    _memo[key] = out
    return out
