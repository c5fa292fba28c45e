"""The offline simulators against brute-force references and against the real RowCache."""
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from bench import cache_sim
from bench.rowcache_sim import replay
from model_client.row_cache import RowCache


def ref_lru(trace, capacity):
    cache, hits = OrderedDict(), 0
    for x in trace:
        if x in cache:
            hits += 1
            cache.move_to_end(x)
        else:
            if len(cache) >= capacity:
                cache.popitem(last=False)
            cache[x] = True
    return hits


def ref_opt(trace, capacity):
    n, nxt, last = len(trace), [0] * len(trace), {}
    for i in range(n - 1, -1, -1):
        nxt[i], last[trace[i]] = last.get(trace[i], n), i
    cache, hits = {}, 0
    for i, x in enumerate(trace):
        if x in cache:
            hits += 1
        elif len(cache) >= capacity:
            del cache[max(cache, key=cache.get)]
        cache[x] = nxt[i]
    return hits


@pytest.mark.parametrize("seed", range(4))
def test_lru_and_belady_equal_brute_force(seed):
    trace = np.random.default_rng(seed).zipf(1.3, 4000) % 700
    for capacity in (1, 7, 50, 300):
        assert cache_sim.lru_hits(trace, capacity) == ref_lru(trace.tolist(), capacity)
        assert cache_sim.opt_hits(trace, capacity) == ref_opt(trace.tolist(), capacity)
        assert cache_sim.lookahead_hits(trace, capacity, 0) == cache_sim.lru_hits(trace, capacity)
        assert cache_sim.lookahead_hits(trace, capacity, len(trace)) == cache_sim.opt_hits(trace, capacity)
        assert (cache_sim.lru_hits(trace, capacity) <= cache_sim.lookahead_hits(trace, capacity, 200)
                <= cache_sim.opt_hits(trace, capacity) <= cache_sim.infinite_hits(trace))


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_replay_equals_the_real_row_cache(policy):
    """The simulator the hit-rate benchmark uses counts exactly what RowCache counts."""
    ids = (np.random.default_rng(7).zipf(1.2, 30_000) % 4000) * 7919
    bounds = np.arange(0, len(ids) + 1, 16)
    hits, num_sets, evictions = replay(ids, bounds, 256 * 16, policy=policy, decay_every=5)
    cache = RowCache(256 * 16 * 8, 8, "cpu", policy, ways=16, decay_every=5)
    assert cache.num_sets == num_sets
    for b in range(len(bounds) - 1):
        batch = torch.unique(torch.from_numpy(ids[bounds[b]:bounds[b + 1]]))
        hit, _ = cache.lookup(batch)
        cache.insert(batch[~hit], torch.zeros(int((~hit).sum()), 8, dtype=torch.uint8))
    distinct_hits = sum(len(np.unique(ids[lo:hi][hits[lo:hi]])) for lo, hi in zip(bounds[:-1], bounds[1:]))
    assert cache.stats.hits == distinct_hits and cache.stats.evictions == evictions


def test_hit_rate_bench_writes_rows_and_plots(tmp_path):
    from bench.hit_rate import HitRateConfig, run
    text = tmp_path / "small.txt"
    from core.corpus import PACKAGED_SAMPLE
    text.write_text(PACKAGED_SAMPLE.read_text()[:60_000])
    out = tmp_path / "hr.json"
    assert run(HitRateConfig(corpora=[str(text)], tokens=8192, seq_len=512, sizes=[0.0005, 0.005],
                             windows=[256], processes=1, modes=["prefill", "decode", "token"], group=4, admit=8,
                             streams=4, out=str(out))) == 0
    rows = json.loads(out.read_text())
    policies = {r["policy"] for r in rows if r["mode"] == "token"}
    assert {"lru", "belady", "infinite", "rowcache-lru", "rowcache-lfu", "lookahead-256",
            "two-tier (host 10x)", "order3-aging"} <= policies
    assert len([r for r in rows if r["policy"] == "lru"]) == 2 * 2  # 2 layers x 2 sizes
    for mode, passes in (("prefill", 16 // 4), ("decode", 8192 // 4)):  # 16 prompts of 512; 4 streams
        mine = [r for r in rows if r["mode"] == mode]
        assert len(mine) == 4 * 2 * 2 and all(r["passes"] == passes for r in mine)  # policies x sizes x layers
        assert {r["policy"] for r in mine} == {"rowcache-lru", "rowcache-lfu", "rowcache-lookahead", "rowcache-tinylfu"}
        assert any(r["hit_rate"] > 0 for r in mine)
    for r in rows:
        assert 0 <= r["hit_rate"] <= 1
        if r["share_of_belady"] is not None:
            assert r["share_of_belady"] <= 1.0 + 1e-9, r
    assert (tmp_path / "hit_rate_small.png").stat().st_size > 10_000


@pytest.mark.parametrize("window", [0, 3, 40])
def test_lookahead_replay_equals_the_row_cache_fed_announcements(window):
    """The RowCache lookahead policy, told each batch `window` batches ahead (as a prefetcher does
    for admitted requests), counts exactly what the replay counts."""
    from bench.rowcache_sim import next_batches
    from model_client.row_cache import NO_USE
    ids = (np.random.default_rng(9).zipf(1.2, 24_000) % 3000) * 7919
    bounds = np.arange(0, len(ids) + 1, 16)
    hits, _, evictions = replay(ids, bounds, 128 * 16, policy="lookahead", window=window)
    nb = next_batches(ids, bounds)
    cache = RowCache(128 * 16 * 8, 8, "cpu", "lookahead", ways=16)
    batches = len(bounds) - 1
    for b in range(batches):
        if b + window < batches:
            r = b + window
            cache.announce(torch.unique(torch.from_numpy(ids[bounds[r]:bounds[r + 1]])), r + 1)
        lo, hi = bounds[b], bounds[b + 1]
        batch, inverse = np.unique(ids[lo:hi], return_inverse=True)
        last = np.zeros(len(batch), dtype=np.int64)
        last[inverse] = np.arange(lo, hi)  # the last occurrence of each id wins, as in the replay
        known = np.where(nb[last] <= b + window, nb[last] + 1, NO_USE)
        batch, known = torch.from_numpy(batch), torch.from_numpy(known)
        hit, _ = cache.lookup(batch, next_use=known)
        cache.insert(batch[~hit], torch.zeros(int((~hit).sum()), 8, dtype=torch.uint8), next_use=known[~hit])
    distinct_hits = sum(len(np.unique(ids[lo:hi][hits[lo:hi]])) for lo, hi in zip(bounds[:-1], bounds[1:]))
    assert cache.stats.hits == distinct_hits and cache.stats.evictions == evictions
    if window:
        lru_hits, _, _ = replay(ids, bounds, 128 * 16, policy="lru")
        assert hits.sum() > lru_hits.sum()
