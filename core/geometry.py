"""TableGeometry: the prime-sized sub-tables of every Engram layer and what they cost to store.

Sizes follow the reference exactly: one global set of used primes; iterate layer, n-gram order, head;
each head takes the smallest prime above the running start (initially engram_vocab_size[n-2] - 1) that
no earlier head took. A layer stores one [sum(primes), head_dim] array, sub-tables concatenated in
column order (order 2 heads 0..K-1, then order 3, ...); global row id = index + offset of its column.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .config import EngramConfig

# Deterministic Miller-Rabin: these witnesses decide every n < 3.3e24 (Sorenson & Webster 2015).
_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in _WITNESSES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _WITNESSES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def next_unused_prime(start: int, used: set[int]) -> int:
    """The smallest prime > start that is not in `used`."""
    candidate = start + 1
    while not is_prime(candidate) or candidate in used:
        candidate += 1
    return candidate


@lru_cache(maxsize=64)
def _layer_primes(vocab_sizes: tuple[int, ...], n_heads: int, layer_ids: tuple[int, ...]):
    used: set[int] = set()
    primes = {}
    for layer_id in layer_ids:
        columns = []
        for vocab in vocab_sizes:  # one entry per n-gram order 2..N
            start = vocab - 1
            for _ in range(n_heads):
                start = next_unused_prime(start, used)
                used.add(start)
                columns.append(start)
        primes[layer_id] = tuple(columns)
    return primes


@dataclass(frozen=True)
class TableGeometry:
    config: EngramConfig
    table_sizes: dict  # layer_id -> list of primes in column order

    @classmethod
    def from_config(cls, config: EngramConfig) -> "TableGeometry":
        primes = _layer_primes(tuple(config.engram_vocab_size), config.n_head_per_ngram,
                               tuple(config.layer_ids))
        return cls(config, {layer: list(p) for layer, p in primes.items()})

    def offsets(self, layer_id: int) -> np.ndarray:
        """int64 [num_columns]: first global row of each sub-table (exclusive cumulative sum)."""
        sizes = np.asarray(self.table_sizes[layer_id], dtype=np.int64)
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    def rows(self, layer_id: int) -> int:
        return int(sum(self.table_sizes[layer_id]))

    @property
    def total_rows(self) -> int:
        return sum(self.rows(layer) for layer in self.config.layer_ids)

    @property
    def total_bytes(self) -> int:
        return self.total_rows * self.config.row_bytes

    @property
    def bytes_per_token(self) -> int:
        """Row bytes one token reads across all Engram layers: layers x columns x row_bytes."""
        return len(self.config.layer_ids) * self.config.num_columns * self.config.row_bytes

    @property
    def total_parameters(self) -> int:
        return self.total_rows * self.config.head_dim
