"""RowCache against a brute-force reference with the same batch semantics, on random traces."""
import numpy as np
import pytest
import torch

from model_client.row_cache import RowCache

from tests.model_client.test_frequency_sketch import ReferenceSketch

GOLDEN, MIX, M64 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 2**64 - 1


def set_of(row: int, num_sets: int) -> int:
    """The set hash in unsigned Python integers: splitmix64's mixing steps."""
    x = (row * GOLDEN) & M64
    x ^= x >> 31
    x = (x * MIX) & M64
    x ^= x >> 29
    return ((x >> 32) & 0x7FFFFFFF) % num_sets


class Reference:
    """One dict per slot, one row at a time: the semantics RowCache vectorizes."""

    def __init__(self, num_sets, ways, policy, decay_every):
        self.num_sets, self.ways, self.policy, self.decay = num_sets, ways, policy, decay_every
        self.slots = [dict(tag=-1, stamp=0, uses=0, pins=0) for _ in range(num_sets * ways)]
        self.tick = self.hits = self.evictions = self.bypassed = 0
        self.sketch = ReferenceSketch(num_sets * ways) if policy == "tinylfu" else None

    def key(self, slot):
        if self.policy == "lru":
            return slot["stamp"]
        if self.policy == "lfu":
            return (slot["uses"] << 40) | slot["stamp"]
        return (self.sketch.estimate(slot["tag"]) << 40) | slot["stamp"]   # tinylfu

    def where(self, row):
        s = set_of(row, self.num_sets)
        for w in range(self.ways):
            if self.slots[s * self.ways + w]["tag"] == row:
                return s * self.ways + w
        return None

    def batch(self, rows, pin=False):
        self.tick += 1
        if self.policy == "lfu" and self.tick % self.decay == 0:
            for slot in self.slots:
                slot["uses"] >>= 1
        misses, pinned = [], []
        if self.sketch:
            self.sketch.record(rows)
        for row in rows:
            k = self.where(row)
            if k is None:
                misses.append(row)
                continue
            self.hits += 1
            self.slots[k].update(stamp=self.tick, uses=self.slots[k]["uses"] + 1)
            if pin:
                self.slots[k]["pins"] += 1
                pinned.append(k)
        order, taken = {}, {}
        if self.sketch:  # the most often read misses of a set meet its victims first
            misses.sort(key=lambda row: (set_of(row, self.num_sets), -self.sketch.estimate(row)))
        for row in misses:
            s = set_of(row, self.num_sets)
            if s not in order:
                def score(w):
                    slot = self.slots[s * self.ways + w]
                    if slot["pins"]:
                        return (2, 0, w)
                    if slot["tag"] < 0:
                        return (0, 0, w)
                    return (1, self.key(slot), w)
                ranked = sorted(range(self.ways), key=score)
                order[s] = [w for w in ranked if not self.slots[s * self.ways + w]["pins"]]
                taken[s] = 0
            if taken[s] >= len(order[s]):
                self.bypassed += 1
                continue
            k = s * self.ways + order[s][taken[s]]
            taken[s] += 1
            victim = self.slots[k]
            if self.sketch and victim["tag"] >= 0 and self.key(victim) >= (self.sketch.estimate(row) << 40) | self.tick:
                self.bypassed += 1   # TinyLFU admission: read less often than its victim
                continue
            self.evictions += self.slots[k]["tag"] >= 0
            self.slots[k] = dict(tag=row, stamp=self.tick, uses=1, pins=1 if pin else 0)
            if pin:
                pinned.append(k)
        return pinned

    def release(self, slots):
        for k in slots:
            self.slots[k]["pins"] -= 1


def trace(seed, batches=300, universe=3000):
    """Zipf-like row popularity, batches of distinct ids of varying size."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, universe + 1) ** 1.05
    weights /= weights.sum()
    perm = rng.permutation(universe) * 7919 + 13  # spread ids over a large range
    return [np.unique(perm[rng.choice(universe, size=int(rng.integers(1, 60)), p=weights)])
            for _ in range(batches)]


@pytest.mark.parametrize("policy", ["lru", "lfu", "tinylfu"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hit_counts_equal_the_brute_force_reference(policy, seed):
    cache = RowCache(capacity_bytes=8 * 4 * 16, row_bytes=16, policy=policy, ways=4, decay_every=7)
    ref = Reference(cache.num_sets, cache.ways, policy, 7)
    assert (cache.num_sets, cache.capacity_rows) == (8, 32)
    for batch in trace(seed):
        ids = torch.from_numpy(batch)
        hit, _ = cache.lookup(ids)
        cache.insert(ids[~hit], torch.zeros(int((~hit).sum()), 16, dtype=torch.uint8))
        ref.batch([int(x) for x in batch])
    assert cache.stats.hits == ref.hits and cache.stats.evictions == ref.evictions
    assert cache.stats.lookups == sum(len(b) for b in trace(seed))
    assert cache.stats.hits > 0 and cache.stats.evictions > 0
    if policy == "tinylfu":
        assert cache.stats.bypassed == ref.bypassed > 0 and cache.sketch.added == ref.sketch.added


@pytest.mark.parametrize("policy", ["lru", "lfu", "tinylfu"])
def test_pinned_rows_survive_pressure_and_misses_bypass(policy):
    """Steps keep their rows pinned while later prefetches insert: the reference agrees on every
    count, and no pinned row is ever evicted or overwritten."""
    cache = RowCache(capacity_bytes=4 * 4 * 8, row_bytes=8, policy=policy, ways=4)
    ref = Reference(cache.num_sets, cache.ways, policy, 1024)
    in_flight = []
    for i, batch in enumerate(trace(5, batches=200, universe=400)):
        ids = torch.from_numpy(batch)
        hit, slot = cache.lookup(ids, pin=True)
        rows = torch.from_numpy(np.repeat((batch % 251).astype(np.uint8)[:, None], 8, axis=1))
        inserted, new_slot = cache.insert(ids[~hit], rows[~hit], pin=True)
        pinned = torch.cat([slot[hit], new_slot[inserted]])
        ref_pinned = ref.batch([int(x) for x in batch], pin=True)
        in_flight.append((pinned, ids[hit].tolist() + ids[~hit][inserted].tolist(), ref_pinned))
        if len(in_flight) > 3:  # three steps in flight at once: far more rows than fit
            old, old_ids, old_ref = in_flight.pop(0)
            assert torch.equal(cache.tags[old], torch.tensor(old_ids, dtype=torch.int64))  # still there
            assert torch.equal(cache.gather(old)[:, 0], torch.tensor(old_ids, dtype=torch.int64) % 251)
            cache.release(old)
            ref.release(old_ref)
    assert cache.stats.bypassed == ref.bypassed > 0
    assert cache.stats.hits == ref.hits and cache.stats.evictions == ref.evictions


def test_bad_arguments():
    with pytest.raises(ValueError, match="policy must be one of"):
        RowCache(1 << 20, 64, policy="fifo")
    with pytest.raises(ValueError, match="fewer than one set"):
        RowCache(64, 64, ways=4)


def test_stats_and_contains():
    cache = RowCache(capacity_bytes=64 * 16, row_bytes=16, ways=4)
    ids = torch.arange(10, dtype=torch.int64) * 1000
    hit, _ = cache.lookup(ids)
    assert not hit.any()
    cache.insert(ids, torch.arange(10, dtype=torch.uint8)[:, None].expand(10, 16).contiguous())
    assert cache.contains(ids).all() and not cache.contains(ids + 1).any()
    hit, slot = cache.lookup(ids)
    assert hit.all() and torch.equal(cache.gather(slot)[:, 0], torch.arange(10, dtype=torch.uint8))
    s = cache.stats
    assert (s.lookups, s.hits, s.misses, s.inserts, s.bytes_in) == (20, 10, 10, 10, 160)
    assert s.hit_rate == 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("policy", ["lru", "lfu", "tinylfu"])
def test_cuda_cache_equals_the_reference(policy):
    cache = RowCache(capacity_bytes=8 * 4 * 16, row_bytes=16, device="cuda", policy=policy, ways=4, decay_every=7)
    ref = Reference(cache.num_sets, cache.ways, policy, 7)
    for batch in trace(3):
        ids = torch.from_numpy(batch).cuda()
        hit, _ = cache.lookup(ids)
        cache.insert(ids[~hit], torch.zeros(int((~hit).sum()), 16, dtype=torch.uint8, device="cuda"))
        ref.batch([int(x) for x in batch])
    assert cache.stats.hits == ref.hits and cache.stats.evictions == ref.evictions


def test_tinylfu_keeps_announced_rows_and_admits_by_merit():
    """One set of 4 ways: a row announced for a later pass outlives rows read more often; a miss
    announced soon displaces a frequent row; a miss read once does not displace a frequent row."""
    cache = RowCache(capacity_bytes=4 * 8, row_bytes=8, policy="tinylfu", ways=4, rows=False)
    hot = torch.tensor([1, 2, 3], dtype=torch.int64)
    for _ in range(5):  # rows 1-3 read five times, row 4 once
        hit, _ = cache.lookup(hot)
        cache.insert(hot[~hit], None)
    hit, _ = cache.lookup(torch.tensor([4]))
    cache.insert(torch.tensor([4])[~hit], None)
    assert cache.contains(torch.tensor([1, 2, 3, 4])).all()
    cache.announce(torch.tensor([4]), cache.tick + 3)
    newcomer = torch.tensor([99])   # read once: loses to every resident, not cached
    hit, _ = cache.lookup(newcomer)
    inserted, _ = cache.insert(newcomer[~hit], None)
    assert not inserted.any() and cache.stats.bypassed == 1
    soon = torch.tensor([77])       # announced for the next pass: displaces the least read unannounced row
    hit, _ = cache.lookup(soon)
    inserted, _ = cache.insert(soon[~hit], None, next_use=torch.tensor([cache.tick + 1]))
    assert inserted.all()
    assert cache.contains(torch.tensor([4, 77])).all() and int(cache.contains(hot).sum()) == 2
