"""FrequencySketch: how often each row id was read lately, in a few bits per cache slot (TinyLFU).

A count-min sketch: `depth` rows of `width` 4-bit counters; id x counts in counter h_d(x) of row d,
and its estimate is the least of its `depth` counters (collisions only ever add). Reads are
recorded once per batch of distinct ids with a conservative update: only the counters that equal
the id's estimate grow, by one, capped at 15 (a counter shared by several ids of one batch grows
once). When `sample` unsaturated reads have been recorded every counter halves, so rows popular long
ago fade. Defaults are issue 17's measurements (BENCHMARKS.md, decode policies): width 16 counters
per cache slot (4 gained 1.6 points of Belady's hits at a 1% cache, 64 nothing more), halving every
40 x slots reads.

Counters are packed eight to an int32 word, so a batch's increments are one index_add_ of
1 << (4 * nibble) into their words after deduplication (a nibble below 15 never carries into its
neighbour): 4 x 16 / 2 = 32 bytes a cache slot. Vectorized torch ops on the cache's device.
"""
from __future__ import annotations

import torch

_SEEDS = -7046029254386353131   # 0x9E3779B97F4A7C15 (as signed int64): row d hashes x + (d + 1) * this
_M1 = -4658895280553007687      # 0xBF58476D1CE4E5B9, splitmix64's multipliers
_M2 = -7723592293110705685      # 0x94D049BB133111EB
CAP = 15                        # 4-bit counters


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 (products wrap; masks make the shifts logical)."""
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * _M1
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * _M2
    return z ^ ((z >> 31) & ((1 << 33) - 1))


class FrequencySketch:
    def __init__(self, slots: int, device, per_slot: int = 16, depth: int = 4, sample_per_slot: int = 40):
        if slots < 1 or per_slot < 1 or depth < 1 or sample_per_slot < 1:
            raise ValueError("FrequencySketch needs slots, per_slot, depth and sample_per_slot >= 1")
        self.depth, self.width = depth, -(-slots * per_slot // 8) * 8   # whole words a row
        self.sample = sample_per_slot * slots
        self.device = torch.device(device)
        # one trash word at the end takes the batch's non-growing counters
        self.words = torch.zeros(depth * self.width // 8 + 1, dtype=torch.int32, device=self.device)
        self.trash = depth * self.width
        self.added = 0   # unsaturated increments since the last halving

    @property
    def nbytes(self) -> int:
        return self.words.numel() * 4

    def _counters(self, ids: torch.Tensor) -> torch.Tensor:
        """[N, depth] counter indices of distinct ids [N]."""
        rows = torch.arange(1, self.depth + 1, device=ids.device, dtype=torch.int64)
        h = _mix(ids[:, None] + rows * _SEEDS)
        return ((h >> 32) & 0x7FFFFFFF) % self.width + (rows - 1) * self.width

    def _read(self, counters: torch.Tensor) -> torch.Tensor:
        return (self.words[counters >> 3] >> ((counters & 7) * 4).int()) & CAP

    def estimate(self, ids: torch.Tensor) -> torch.Tensor:
        """ids int64 [...] -> int64 estimates [...] (0..15)."""
        flat = ids.reshape(-1)
        if flat.numel() == 0:
            return torch.zeros(ids.shape, dtype=torch.int64, device=ids.device)
        return self._read(self._counters(flat)).amin(dim=1).long().reshape(ids.shape)

    def record(self, ids: torch.Tensor) -> None:
        """One read each of distinct ids [N] (a batch)."""
        if ids.numel() == 0:
            return
        counters = self._counters(ids)
        values = self._read(counters)
        least = values.amin(dim=1, keepdim=True)
        grow = (values == least) & (least < CAP)
        target = torch.where(grow, counters, self.trash).reshape(-1).sort().values
        first = torch.ones_like(target, dtype=torch.bool)
        first[1:] = target[1:] != target[:-1]
        step = torch.where(first & (target != self.trash), 1 << ((target & 7) * 4), 0).int()
        self.words.index_add_(0, target >> 3, step)
        self.words[-1] = 0
        self.added += int((least < CAP).sum())   # one host read a batch (a sync on a GPU)
        if self.added >= self.sample:
            self.words.copy_((self.words >> 1) & 0x77777777)
            self.added = 0

    def load(self, other: "FrequencySketch", non_blocking: bool = False) -> None:
        self.words.copy_(other.words, non_blocking=non_blocking)
        self.added = other.added

    def clear(self) -> None:
        self.words.zero_()
        self.added = 0
