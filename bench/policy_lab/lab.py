"""Evaluating a policy: its hit rates on a trace at cache fractions, and their share of Belady's MIN.

Belady's MIN (bench.cache_sim.opt_hits, fully associative, one access per id per pass) and the
infinite cache's hits are computed once per (trace, layer, fraction) and kept in belady.json beside
the traces. A policy's kwargs (policies.py) are sim.params names plus:
  ways       ways per set (default 16);
  sk_rel     sketch width relative to capacity: 2**sk_log2 the power of two >= sk_rel x capacity rows;
  reset_rel  the sketch halves after reset_rel x capacity rows unsaturated reads (sk_reset);
  prior      a static prior (policies.prior_for) the scores or admission read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from bench.cache_sim import infinite_hits, opt_hits

from . import sim
from . import traces as tr


def belady(traces: str | Path, tag: str, tokens: int, layer: int, frac: float, mode: str = "decode") -> dict:
    """{"belady", "infinite": hit rates, "cap": rows, "accesses"} of the trace at that fraction."""
    path = Path(traces) / "belady.json"
    db = json.loads(path.read_text()) if path.exists() else {}
    key = f"{tag}/{mode}/{tokens}/{layer}/{frac}"
    if key not in db:
        ids, _, total, _ = tr.load(traces, tag, tokens, layer, mode)
        cap = sim.capacity_rows(total, frac)
        entry = {"belady": opt_hits(ids, cap) / len(ids), "infinite": infinite_hits(ids) / len(ids),
                 "cap": cap, "accesses": len(ids)}
        db = json.loads(path.read_text()) if path.exists() else {}   # another run may have added keys
        db[key] = entry
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(db, indent=1))
        tmp.replace(path)
    return db[key]


def resolve(kw: dict, cap: int) -> dict:
    """sim.params kwargs of a policy's kwargs (without ways and prior) at a capacity of cap rows."""
    k2 = dict(kw)
    if "sk_rel" in k2:  # sketch width relative to capacity (power of two >= rel * cap)
        k2["sk_log2"] = int(np.ceil(np.log2(k2.pop("sk_rel") * cap)))
    if "reset_rel" in k2:
        k2["sk_reset"] = int(k2.pop("reset_rel") * cap)
    return k2


def evaluate(traces: str | Path, tag: str, tokens: int, kw: dict, layer: int = 1, fracs=(0.01, 0.05),
             prior_fn=None, mode: str = "decode") -> dict:
    """{frac: (hit rate, share of Belady)} of the policy with kwargs `kw`."""
    ids, bounds, total, _ = tr.load(traces, tag, tokens, layer, mode)
    kw = dict(kw)
    ways = kw.pop("ways", 16)
    kw.pop("prior", None)
    prior = prior_fn(tag, layer) if prior_fn else None
    out = {}
    for frac in fracs:
        b = belady(traces, tag, tokens, layer, frac, mode)
        cap = sim.capacity_rows(total, frac, ways=ways)
        rate, _ = sim.simulate(ids, bounds, cap, ways=ways, prior=prior, **resolve(kw, cap))
        out[frac] = (rate, rate / b["belady"])
    return out
