import numpy as np

from core.geometry import is_prime, next_unused_prime
from model_client import EngramConfig, TableGeometry


def test_published_table_sizes():
    demo = TableGeometry.from_config(EngramConfig.preset("demo"))
    assert demo.rows(1) == 10_344_164 and demo.rows(15) == 10_348_242
    v4 = TableGeometry.from_config(EngramConfig.preset("deepseek-v4.1"))
    assert v4.rows(1) == 384_006_168 and v4.rows(14) == 384_016_682
    # DeepSeek-V4.1 ships 189 GiB of fp8 tables
    assert round(v4.total_bytes / 2**30) == 189


def test_is_prime_matches_a_sieve():
    n = 200_000
    sieve = np.ones(n, dtype=bool)
    sieve[:2] = False
    for p in range(2, int(n ** 0.5) + 1):
        if sieve[p]:
            sieve[p * p::p] = False
    assert [i for i in range(n) if is_prime(i)] == list(np.flatnonzero(sieve))
    assert is_prime(2**61 - 1) and not is_prime(3215031751)  # a strong pseudoprime to bases 2,3,5,7


def test_primes_follow_the_search_rule():
    cfg = EngramConfig.preset("demo")
    geo = TableGeometry.from_config(cfg)
    used: set[int] = set()
    for layer in cfg.layer_ids:
        primes = geo.table_sizes[layer]
        assert len(primes) == cfg.num_columns
        for order in range(cfg.max_ngram_size - 1):
            start = cfg.engram_vocab_size[order] - 1
            for head in range(cfg.n_head_per_ngram):
                p = primes[order * cfg.n_head_per_ngram + head]
                assert p == next_unused_prime(start, used)
                assert all(not is_prime(c) or c in used for c in range(start + 1, p))
                used.add(p)
                start = p
    assert len(used) == cfg.num_columns * len(cfg.layer_ids)  # all distinct


def test_offsets_are_exclusive_cumsum():
    geo = TableGeometry.from_config(EngramConfig.preset("demo"))
    sizes = geo.table_sizes[15]
    offsets = geo.offsets(15)
    assert offsets[0] == 0 and offsets.dtype == np.int64
    assert list(np.diff(offsets)) == sizes[:-1]
    assert offsets[-1] + sizes[-1] == geo.rows(15)
    assert geo.bytes_per_token == 2 * 16 * 256
