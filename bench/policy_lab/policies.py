"""Every policy tried in issue 17's lab, by name: kwargs of lab.evaluate (sim.params names, plus ways,
sk_rel, reset_rel and prior; lab.py says what those mean).

SK: a 4-counters-a-slot sketch halving every 40 x capacity reads; SK16: 16 counters a slot. The best
for decode, sk16-lfu-merge (a sketch-LFU of 16 counters a slot, residents and misses merged per set),
is what RowCache's "tinylfu" policy implements with batch semantics (model_client/frequency_sketch.py).
Priors: "text" (policies.TEXT: counts on another text, prior.py, scored 2 x log2(1 + count)) or
"order" (1 for a 2-gram row, 0 for a 3-gram row).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import traces as tr

SK = dict(sk_rel=4, reset_rel=40)
SK16 = dict(sk_rel=16, reset_rel=40)
P = {
    "lru": dict(score=0, rank=1),
    "lfu-d1024": dict(score=1, decay_every=1024, rank=1),
    "lfu-d1024-pin-scored": dict(score=1, decay_every=1024, rank=1, pin_scored=1),   # the first lab's lfu-d1024
    "lfu-d8192": dict(score=1, decay_every=8192),
    "lfu-never": dict(score=1, decay_every=0),
    "slru-p8": dict(score=0, prot=8),
    "slru-p12": dict(score=0, prot=12),
    "slru-p8-ghost16": dict(score=0, prot=8, ghost=16),
    "hyperbolic": dict(score=4),
    "sk-lfu": dict(score=2, **SK),
    "sk-lfu-r10": dict(score=2, sk_rel=4, reset_rel=10),
    "sk16-lfu": dict(score=2, **SK16),
    "sk64-lfu": dict(score=2, sk_rel=64, reset_rel=40),
    "tinylfu-lru-gt": dict(score=0, admit=1, **SK),
    "tinylfu-lru-ge": dict(score=0, admit=2, **SK),
    "tinylfu-sklfu-gt": dict(score=2, admit=1, **SK),
    "tinylfu-sklfu-ge": dict(score=2, admit=2, **SK),
    "sk16-tinylfu-sklfu-ge": dict(score=2, admit=2, **SK16),
    "wtinylfu-w1-p12": dict(score=0, admit=1, win=1, prot=12, **SK),
    "wtinylfu-w2-p11": dict(score=0, admit=1, win=2, prot=11, **SK),
    "sk16-wtinylfu-w1-p12": dict(score=0, admit=1, win=1, prot=12, **SK16),
    "sk16-wtinylfu-w1-sklfu": dict(score=2, admit=1, win=1, **SK16),
    "tinylfu-slru-p12": dict(score=0, admit=1, prot=12, **SK),
    "prior-lfu": dict(score=3, prior="text"),
    "prior-admit-lru": dict(score=0, admit=1, adm_src=1, prior="text"),
    "sk16+prior-lfu": dict(score=5, prior_w=16, prior="text", **SK16),
    "sk16+prior/2-lfu": dict(score=5, prior_w=8, prior="text", **SK16),
    "sk16+prior-lfu-admit-ge": dict(score=5, prior_w=16, admit=2, adm_src=2, prior="text", **SK16),
    "sk16+order-lfu": dict(score=5, prior_w=16, prior="order", **SK16),
    "sk16+order4-lfu": dict(score=5, prior_w=64, prior="order", **SK16),
    "sk16-lfu-w32": dict(score=2, ways=32, **SK16),
    "sk16-lfu-w64": dict(score=2, ways=64, **SK16),
    "lru-w64": dict(score=0, ways=64),
    "sk16-lfu-merge": dict(score=2, rank=2, **SK16),
    "lru-merge": dict(score=0, rank=2),
}
TEXT = {"brown": "gutenberg", "msra_news": "msra_tail"}   # a corpus's "text" prior: counted on another text


def prior_for(kw: dict, traces: str | Path, tokens: int = 1048576, mode: str = "decode"):
    """None, or f(tag, layer) -> int32 prior per row id, for a policy's kwargs."""
    src = kw.get("prior")
    if not src:
        return None
    cache: dict = {}

    def f(tag, layer):
        key = (tag, layer)
        if key not in cache:
            if src == "text":
                from .prior import prior
                c = prior(TEXT[tag], layer, traces).astype(np.int64)
                cache[key] = np.floor(2 * np.log2(1 + c)).astype(np.int32)   # 0..~40: 2 x log2(1 + count)
            else:  # order: 1 for 2-gram rows, 0 for 3-gram rows
                d = np.load(tr.trace_path(traces, tag, tokens, mode))
                p = np.zeros(int(d["total_rows"]), np.int32)
                p[:d[f"offsets{layer}"][8]] = 1
                cache[key] = p
        return cache[key]
    return f
