"""The static oracle: the best fixed set of rows. It caches, for the whole trace, the `cap` ids read
most often in it (by their true trace counts, so clairvoyant; fully associative; each cached id
misses once), for comparison with Belady's MIN and with the policies that adapt.
"""
from __future__ import annotations

import numpy as np

from . import lab, sim
from . import traces as tr


def report(traces, tag: str, tokens: int, layer: int = 1, fracs=(0.01, 0.05)) -> list[str]:
    ids, _, total, _ = tr.load(traces, tag, tokens, layer)
    _, counts = np.unique(ids, return_counts=True)
    c = np.sort(counts)[::-1]
    out = []
    for frac in fracs:
        cap = sim.capacity_rows(total, frac)
        rate = (c[:cap] - 1).sum() / len(ids)
        b = lab.belady(traces, tag, tokens, layer, frac)
        out.append(f"{tag} {tokens} {frac} static top-C oracle (fully assoc) {rate:.4f}, belady {b['belady']:.4f}")
    return out
