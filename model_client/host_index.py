"""HostIndex: one decode step's probe and insert on the host copy of the device cache's index, compiled.

During graph-captured decode the device cache's index lives on the host (staged_step.py), and the
plan of an Engram layer the host serves sits on the step's critical path whenever the service is
slow. RowCache's torch ops over [8,192 x 16] tensors took 8.6 ms a layer on the H200's host
(BENCHMARKS.md, issue 16); this is the same probe (pinning the hits), insert (the k-th miss of a set
takes that set's k-th best victim by the scores at the insert's start, pinned slots last) and
release, as one loop over the ids, compiled with numba, on the RowCache's own arrays. It changes
them exactly as `lookup(pin=True)`, `insert(rows=None)` and `release` do (a test holds the two equal
under every policy; tinylfu's sketch too, as FrequencySketch.record and estimate). Without numba,
`plan` runs those RowCache calls.
"""
from __future__ import annotations

import numpy as np
import torch

from .frequency_sketch import _M1, _M2, _SEEDS, CAP
from .row_cache import _GOLDEN, _MIX, RowCache
from .victim_order import KNOWN, NO_USE

try:
    import numba
except ImportError:  # the bench extra brings numba; without it the torch ops do the same, slower
    numba = None

_POLICY = {"lru": 0, "lfu": 1, "lookahead": 2, "tinylfu": 3}


def plan(index: RowCache, unique: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct ids [U] -> (hit bool [U], slot [U] (trash on a miss), the misses' slots [M] (trash
    where bypassed)), for a RowCache on CPU, as its lookup(pin=True) + insert(misses) + release."""
    if numba is None or index.device.type != "cpu":
        hit, slot = index.lookup(unique, pin=True)
        _, miss_slots = index.insert(unique[~hit], None)
        index.release(slot)
        return hit, slot, miss_slots
    index.tick += 1
    if index.policy == "lfu" and index.tick % index.decay_every == 0:
        index.uses >>= 1
    ids = unique.numpy()
    sketch = index.sketch
    if sketch is not None:  # as FrequencySketch.record
        sketch.added += _record(ids, sketch.words.numpy(), sketch.width, sketch.depth)
        if sketch.added >= sketch.sample:
            sketch.words.copy_((sketch.words >> 1) & 0x77777777)
            sketch.added = 0
    words = sketch.words.numpy() if sketch is not None else np.zeros(1, dtype=np.int32)
    width, depth = (sketch.width, sketch.depth) if sketch is not None else (1, 1)
    hit, slot = np.zeros(len(ids), dtype=np.bool_), np.empty(len(ids), dtype=np.int64)
    miss_slots = np.empty(len(ids), dtype=np.int64)
    m = _plan(ids, index.tags.numpy(), index.stamp.numpy(), index.uses.numpy(), index.pins.numpy(),
              index.next_use.numpy(), index._counts.numpy(), index.num_sets, index.ways, index.trash, index.tick,
              _POLICY[index.policy], words, width, depth, hit, slot, miss_slots)
    return torch.from_numpy(hit), torch.from_numpy(slot), torch.from_numpy(miss_slots[:m])


if numba is not None:
    @numba.njit(cache=True)
    def _set_of(x, num_sets):
        x = x * _GOLDEN
        x = x ^ ((x >> 31) & ((1 << 33) - 1))
        x = x * _MIX
        x = x ^ ((x >> 29) & ((1 << 35) - 1))
        return ((x >> 32) & 0x7FFFFFFF) % num_sets

    @numba.njit(cache=True)
    def _counter(x, d, width):
        z = x + (d + 1) * _SEEDS
        z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * _M1
        z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * _M2
        z = z ^ ((z >> 31) & ((1 << 33) - 1))
        return ((z >> 32) & 0x7FFFFFFF) % width + d * width

    @numba.njit(cache=True)
    def _estimate(x, words, width, depth):
        least = CAP
        for d in range(depth):
            c = _counter(x, d, width)
            least = min(least, (words[c >> 3] >> ((c & 7) * 4)) & CAP)
        return least

    @numba.njit(cache=True)
    def _record(ids, words, width, depth):
        """The batch's reads, estimates taken at its start; a counter shared in the batch grows once.
        Returns the unsaturated reads."""
        grow = np.empty(len(ids) * depth, dtype=np.int64)
        g, unsaturated = 0, 0
        for i in range(len(ids)):
            least = _estimate(ids[i], words, width, depth)
            if least < CAP:
                unsaturated += 1
                for d in range(depth):
                    c = _counter(ids[i], d, width)
                    if (words[c >> 3] >> ((c & 7) * 4)) & CAP == least:
                        grow[g] = c
                        g += 1
        grow = np.unique(grow[:g])
        for c in grow:
            words[c >> 3] += np.int32(1 << ((c & 7) * 4))
        return unsaturated

    @numba.njit(cache=True)
    def _plan(ids, tags, stamp, uses, pins, next_use, counts, num_sets, ways, trash, tick, policy,
              words, width, depth, hit, slot, miss_slots):
        n = len(ids)
        misses = np.empty(n, dtype=np.int64)
        miss_sets = np.empty(n, dtype=np.int64)
        m = 0
        for i in range(n):  # probe: touch and pin the hits
            s = _set_of(ids[i], num_sets)
            slot[i] = trash
            for w in range(ways):
                if tags[s * ways + w] == ids[i]:
                    slot[i] = s * ways + w
                    break
            if slot[i] != trash:
                hit[i] = True
                stamp[slot[i]] = tick
                uses[slot[i]] += 1
                pins[slot[i]] += 1
            else:
                misses[m], miss_sets[m] = ids[i], s
                m += 1
        if m:
            stamp[trash] = tick  # as the torch probe's index_fill_ (the trash slot: never read)
        counts[0] += n
        counts[1] += n - m
        estimate = np.zeros(m, dtype=np.int64)
        if policy == 3:  # tinylfu: a set's most often read misses first
            for i in range(m):
                estimate[i] = _estimate(misses[i], words, width, depth)
        order = np.argsort(miss_sets[:m] * 16 + 15 - estimate, kind="mergesort")  # grouped by set
        ranked = np.empty(ways, dtype=np.int64)
        score = np.empty(ways, dtype=np.int64)
        raw = np.empty(ways, dtype=np.int64)
        targets = np.empty(m, dtype=np.int64)
        k, prev, usable = 0, -1, 0
        for j in range(m):  # each set's victims ranked once, by the state at the insert's start
            i = order[j]
            s = miss_sets[i]
            if s != prev:
                usable = 0
                for w in range(ways):
                    at = s * ways + w
                    if pins[at] > 0:
                        v = 1 << 57
                    else:
                        usable += 1
                        if tags[at] < 0:
                            v = -1
                        elif policy == 0:
                            v = stamp[at]
                        elif policy == 1:
                            v = (min(uses[at], 1 << 16) << 40) | stamp[at]
                        elif policy == 3 and next_use[at] > tick and next_use[at] < NO_USE:
                            v = KNOWN - next_use[at]   # tinylfu: an announced use first
                        elif policy == 3:
                            v = (np.int64(_estimate(tags[at], words, width, depth)) << 40) | stamp[at]
                        elif next_use[at] > tick and next_use[at] < NO_USE:
                            v = (1 << 41) + (1 << 40) - next_use[at]
                        else:
                            v = stamp[at]
                    raw[w] = v
                    score[w] = v * ways + w
                    j2 = w  # insertion sort of the ways by score (distinct): no allocation per set
                    while j2 > 0 and score[ranked[j2 - 1]] > score[w]:
                        ranked[j2] = ranked[j2 - 1]
                        j2 -= 1
                    ranked[j2] = w
                k, prev = 0, s
            targets[i] = s * ways + ranked[min(k, ways - 1)] if k < usable else trash
            if policy == 3 and k < usable and raw[ranked[k]] >= ((estimate[i] << 40) | tick):
                targets[i] = trash  # TinyLFU admission: read less often than its victim
            k += 1
        inserted = 0
        for i in range(m):
            t = targets[i]
            if t != trash:
                if tags[t] >= 0:
                    counts[3] += 1
                inserted += 1
        for i in range(m):  # then the writes (a victim's old tag counted above)
            t = targets[i]
            if t != trash:
                tags[t], stamp[t], uses[t], next_use[t] = misses[i], tick, 1, NO_USE
            miss_slots[i] = t
        tags[trash] = -1
        counts[2] += inserted
        counts[4] += m - inserted
        for i in range(n):  # release the hits' pins
            if hit[i]:
                pins[slot[i]] -= 1
        pins[trash] = 0
        return m
