"""The RowCache kernels change the cache exactly as its PyTorch reference does: same hits, slots,
insertions, bypasses, counters and per-slot state, for every policy, with pins and announced uses,
on random traces under pressure (far more distinct ids than slots)."""
import pytest
import torch

import kernels
from model_client.row_cache import NO_USE, POLICIES, RowCache

from . import DEVICES


def state(cache):
    live = cache.tags[:-1] >= 0  # the trash slot's scratch values and empty slots' bytes differ
    return [cache.tags[:-1], cache.stamp[:-1], cache.uses[:-1], cache.pins[:-1], cache.next_use[:-1],
            cache.data[:-1][live]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", POLICIES)
def test_cache_kernels_equal_reference(policy, device):
    g = torch.Generator().manual_seed(11)
    ref = RowCache(96 * 12, 12, policy=policy, ways=16, decay_every=3)                # 6 sets of 16
    tri = RowCache(96 * 12, 12, device=device, policy=policy, ways=16, decay_every=3)
    for step in range(24):
        ids = torch.unique(torch.randint(0, 300, (120,), generator=g))
        ids = ids[torch.randperm(len(ids), generator=g)]
        upcoming = None
        if policy in ("lookahead", "tinylfu"):
            soon = torch.randint(step + 1, step + 30, (len(ids),), generator=g)
            upcoming = torch.where(torch.rand(len(ids), generator=g) < 0.5, soon, NO_USE)
        pin = step % 3 == 0
        results = []
        for cache, name in ((ref, "reference"), (tri, "triton")):
            with kernels.backend(name):
                hit, slot = cache.lookup(ids.to(cache.device), pin=pin, next_use=upcoming)
                miss = ids[~hit.cpu()]
                rows = (miss[:, None] * torch.arange(1, 13)).to(torch.uint8)
                later = None if upcoming is None else upcoming[~hit.cpu()]
                inserted, islot = cache.insert(miss.to(cache.device), rows, pin=pin, next_use=later)
                if step % 4 == 3:
                    cache.release(torch.cat([slot, islot]))
                results.append([t.cpu() for t in (hit, slot, inserted, islot)])
        for a, b in zip(*results):
            assert torch.equal(a, b), step
        for a, b in zip(state(ref), state(tri)):
            assert torch.equal(a, b.cpu()), step
    assert ref.stats == tri.stats
    s = ref.stats
    assert s.hits and s.evictions and s.bypassed   # the trace exercised every path
