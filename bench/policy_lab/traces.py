"""Traces: each Engram layer's per-pass deduplicated row ids, extracted from real text and kept as npz.

Extraction uses the project's hasher and corpus code (bench.hit_rate: HitRateConfig, make_hasher,
corpus_sequences) and builds the passes exactly as bench/serving_replay.py does:
  decode   the corpus's tokens as `streams` sequences stepping together, one token each per pass;
           a pass is torch.unique of the streams' row ids at that step (ServingReplay.decode);
  prefill  prompts of seq_len tokens, `group` per pass; a pass is the group's distinct row ids
           (ServingReplay.prefill's plan.unique).
A trace file <dir>/<tag>_<mode>_<tokens>.npz (tag: the corpus file's name before its first dot)
holds ids<layer> and bounds<layer> (pass boundaries into ids) per layer, offsets<layer> (first row of
each sub-table: columns 0-7 are the 2-gram heads, 8-15 the 3-gram ones), tokens and total_rows
(rows of all layers' tables together, which cache fractions are taken of).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_DIR = "bench-out/policy_lab/traces"


def tag_of(corpus: str) -> str:
    return Path(corpus).name.split(".")[0]


def trace_path(traces: str | Path, tag: str, tokens: int, mode: str = "decode") -> Path:
    return Path(traces) / f"{tag}_{mode}_{tokens}.npz"


def decode_passes(hasher, seqs: np.ndarray, streams: int = 64) -> tuple[dict, np.ndarray]:
    """{layer: (ids, bounds)} of decode passes, and the streams [streams, steps] they stepped."""
    flat = seqs.reshape(-1)
    st = flat[:len(flat) - len(flat) % streams].reshape(streams, -1)
    _, row_ids = hasher.hash_and_rows(st)            # [L, S, T, C]
    out = {}
    for i, layer in enumerate(hasher.config.layer_ids):
        ids, bounds = [], [0]
        r = row_ids[i]
        for t in range(st.shape[1]):
            u = torch.unique(torch.from_numpy(np.ascontiguousarray(r[:, t]).reshape(-1))).numpy()
            ids.append(u)
            bounds.append(bounds[-1] + len(u))
        out[layer] = (np.concatenate(ids), np.array(bounds, dtype=np.int64))
    return out, st


def prefill_passes(hasher, seqs: np.ndarray, group: int = 64) -> dict:
    """{layer: (ids, bounds)} of prefill passes of `group` prompts each."""
    out = {layer: ([], [0]) for layer in hasher.config.layer_ids}
    for g in range(0, len(seqs), group):
        _, row_ids = hasher.hash_and_rows(seqs[g:g + group])
        for i, layer in enumerate(hasher.config.layer_ids):
            u = np.unique(row_ids[i].reshape(-1))
            out[layer][0].append(u)
            out[layer][1].append(out[layer][1][-1] + len(u))
    return {layer: (np.concatenate(a), np.array(b, dtype=np.int64)) for layer, (a, b) in out.items()}


def extract(corpus: str, tokens: int, mode: str = "decode", traces: str | Path = DEFAULT_DIR) -> Path:
    """Write the trace file of `corpus` (a file, or a name under the shared corpora) and return its path."""
    from bench.hit_rate import HitRateConfig, corpus_sequences, make_hasher
    cfg = HitRateConfig(tokens=tokens)
    hasher = make_hasher(cfg)
    t0 = time.time()
    seqs = corpus_sequences(cfg, corpus, hasher)
    print(f"{corpus}: sequences {seqs.shape} [{time.time() - t0:.0f}s]", flush=True)
    if mode == "decode":
        passes, _ = decode_passes(hasher, seqs, cfg.streams)
    elif mode == "prefill":
        passes = prefill_passes(hasher, seqs, cfg.group)
    else:
        raise ValueError(f"mode must be decode or prefill (got {mode!r})")
    layers = hasher.config.layer_ids
    save = {"tokens": seqs.size, "total_rows": sum(hasher.geometry.rows(layer) for layer in layers)}
    for layer, (ids, b) in passes.items():
        save[f"ids{layer}"], save[f"bounds{layer}"] = ids, b
        save[f"offsets{layer}"] = hasher.geometry.offsets(layer)
    path = trace_path(traces, tag_of(corpus), tokens, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **save)
    print(f"wrote {path}: {mode}, {seqs.size} tokens, accesses {({layer: len(v[0]) for layer, v in passes.items()})} "
          f"[{time.time() - t0:.0f}s]", flush=True)
    return path


def load(traces: str | Path, tag: str, tokens: int, layer: int = 1, mode: str = "decode"):
    """(ids, bounds, total_rows, tokens) of one layer's trace."""
    path = trace_path(traces, tag, tokens, mode)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trace (python -m bench.policy_lab extract --corpus ... "
                                f"--tokens {tokens} --mode {mode} --traces {traces})")
    d = np.load(path)
    return d[f"ids{layer}"], d[f"bounds{layer}"], int(d["total_rows"]), int(d["tokens"])


def offsets(traces: str | Path, tag: str, tokens: int, layer: int = 1, mode: str = "decode") -> np.ndarray:
    return np.load(trace_path(traces, tag, tokens, mode))[f"offsets{layer}"]


def order3(traces: str | Path, tag: str, tokens: int, ids: np.ndarray, layer: int = 1, mode: str = "decode"):
    """bool per access: a 3-gram row (sub-table 8 or later)."""
    return (np.searchsorted(offsets(traces, tag, tokens, layer, mode), ids, side="right") - 1) >= 8
