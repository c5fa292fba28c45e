"""FrequencySketch against a count-min sketch in plain Python integers, one counter at a time."""
from collections import defaultdict

import numpy as np
import torch

from model_client.frequency_sketch import FrequencySketch

M64 = 2**64 - 1
SEED, M1, M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


class ReferenceSketch:
    """Counters in a dict: row d of id x is splitmix64(x + (d + 1) * SEED), its top 31 bits mod width."""

    def __init__(self, slots, per_slot=16, depth=4, sample_per_slot=40):
        self.depth, self.width = depth, -(-slots * per_slot // 8) * 8
        self.sample, self.added = sample_per_slot * slots, 0
        self.counters = defaultdict(int)

    def cells(self, x):
        out = []
        for d in range(self.depth):
            z = (x + (d + 1) * SEED) & M64
            z = ((z ^ (z >> 30)) * M1) & M64
            z = ((z ^ (z >> 27)) * M2) & M64
            z ^= z >> 31
            out.append(d * self.width + ((z >> 32) & 0x7FFFFFFF) % self.width)
        return out

    def estimate(self, x):
        return min(self.counters[c] for c in self.cells(x))

    def record(self, batch):
        grow = set()
        for x in batch:  # estimates at the batch's start; a shared counter grows once
            least = self.estimate(x)
            if least < 15:
                self.added += 1
                grow |= {c for c in self.cells(x) if self.counters[c] == least}
        for c in grow:
            self.counters[c] += 1
        if self.added >= self.sample:
            for c in self.counters:
                self.counters[c] >>= 1
            self.added = 0


def test_sketch_equals_the_reference_through_saturation_and_halving():
    rng = np.random.default_rng(7)
    sketch, ref = FrequencySketch(40, "cpu"), ReferenceSketch(40)
    universe = rng.integers(-2**62, 2**62, size=900)  # signed ids: the hash treats them as 64-bit words
    halvings = 0
    for _ in range(400):
        batch = np.unique(universe[(rng.zipf(1.3, size=int(rng.integers(1, 80))) - 1) % len(universe)])
        before = sketch.added
        sketch.record(torch.from_numpy(batch))
        ref.record([int(x) for x in batch])
        halvings += sketch.added < before
        assert sketch.added == ref.added
    got = sketch.estimate(torch.from_numpy(universe)).tolist()
    assert got == [ref.estimate(int(x)) for x in universe]
    assert halvings >= 2 and max(got) == 15 and min(got) == 0   # halved, saturated, and untouched ids


def test_estimates_never_undercount_before_halving():
    """Count-min: collisions only add, so a row's estimate is at least its reads (up to the cap)."""
    sketch = FrequencySketch(8, "cpu", per_slot=2)   # 16 counters a row: many collisions
    reads = defaultdict(int)
    rng = np.random.default_rng(3)
    for _ in range(20):
        batch = np.unique(rng.integers(0, 200, size=10))
        sketch.record(torch.from_numpy(batch))
        for x in batch:
            reads[int(x)] += 1
    ids = sorted(reads)
    est = sketch.estimate(torch.tensor(ids)).tolist()
    assert all(e >= min(reads[x], 15) for e, x in zip(est, ids))
    assert sketch.nbytes == 4 * (4 * 16 // 8 + 1)
