"""The compiled host index changes a RowCache exactly as its own lookup(pin=True), insert and
release do, under every policy, batch after batch, with evictions, bypasses and LFU decay."""
import numpy as np
import pytest
import torch

from model_client import host_index
from model_client.row_cache import NO_USE, RowCache

pytestmark = pytest.mark.skipif(host_index.numba is None, reason="needs numba (the bench extra)")


def torch_plan(cache, unique):
    hit, slot = cache.lookup(unique, pin=True)
    _, miss_slots = cache.insert(unique[~hit], None)
    cache.release(slot)
    return hit, slot, miss_slots


@pytest.mark.parametrize("policy", ["lru", "lfu", "lookahead", "tinylfu"])
def test_host_index_equals_row_cache(policy):
    make = lambda: RowCache(64 * 16 * 8, 8, "cpu", policy, ways=16, decay_every=3, kernels=False, rows=False)  # noqa: E731
    a, b = make(), make()
    rng = np.random.default_rng(1)
    halved, added = policy != "tinylfu", 0
    for step in range(100):
        # a hot set and a long tail: hits, misses, full sets (bypasses) and evictions all happen
        ids = np.concatenate([rng.integers(0, 400, 300), rng.integers(0, 5000, 500)])
        unique = torch.unique(torch.from_numpy(ids))
        if policy in ("lookahead", "tinylfu") and step % 5 == 0:  # some announced future uses to order by
            for cache in (a, b):
                cache.announce(unique[::7], cache.tick + 3)
        want, got = torch_plan(a, unique), host_index.plan(b, unique)
        for x, y in zip(want, got):
            assert torch.equal(x, y), step
        for name in ("tags", "stamp", "uses", "pins", "next_use"):  # the trash slot is scratch: not compared
            assert torch.equal(getattr(a, name)[:-1], getattr(b, name)[:-1]), (step, name)
        assert torch.equal(a._counts, b._counts) and a.tick == b.tick
        if policy == "tinylfu":
            assert torch.equal(a.sketch.words[:-1], b.sketch.words[:-1]) and a.sketch.added == b.sketch.added
            halved = halved or a.sketch.added < added  # every 40 x 1,024 slots reads: at least once
            added = a.sketch.added
    stats = b.stats
    assert halved
    assert stats.hits and stats.evictions and stats.bypassed  # every branch of the insert ran
    assert (b.next_use[:-1] == NO_USE).any()
