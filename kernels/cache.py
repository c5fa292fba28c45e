"""Device row cache probe and insert (model_client.RowCache's batch operations) as Triton kernels.

The cache is set-associative: row id r lives in one of W ways of set h(r) mod S. The references
are RowCache's own PyTorch paths (`_lookup_reference`, `_insert_reference`); these kernels change
the same tensors the same way, except the trash slot's scratch values, which nothing reads.

probe:  one program per BLOCK ids: hash, load the set's W tags, compare; touch the hits (stamp,
        use count, pin, next use) and count lookups and hits with two atomics per program.
insert: the misses are sorted by set (torch's stable radix sort) and ranked within their set; one
        kernel scores every candidate way of each miss's set (pinned last, then by policy), picks
        the rank-th best victim, and a second kernel writes tags, rows and metadata. Two launches,
        so that no program reads a set another one is already writing.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

POLICY_CODES = {"lru": 0, "lfu": 1, "lookahead": 2}
# globals a kernel reads must be constexprs
_GOLDEN = tl.constexpr(-7046029254386353131)  # splitmix64's constants as signed int64 (RowCache.set_of)
_MIX = tl.constexpr(-4658895280553007687)
_NO_USE = tl.constexpr(1 << 50)


@triton.jit
def _set_of(ids, num_sets):
    x = ids * _GOLDEN
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    x = x * _MIX
    x = x ^ ((x >> 29) & ((1 << 35) - 1))
    return ((x >> 32) & 0x7FFFFFFF) % num_sets


@triton.jit
def _probe_kernel(ids_ptr, tags_ptr, stamp_ptr, uses_ptr, pins_ptr, next_ptr, nu_ptr, hit_ptr, slot_ptr,
                  counts_ptr, n, num_sets, trash, tick,
                  W: tl.constexpr, BLOCK: tl.constexpr, PIN: tl.constexpr, NEXT: tl.constexpr):
    off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = off < n
    ids = tl.load(ids_ptr + off, mask=ok, other=-2)
    sets = _set_of(ids, num_sets)
    ways = tl.arange(0, W)
    tags = tl.load(tags_ptr + sets[:, None] * W + ways[None, :], mask=ok[:, None], other=-3)
    match = tags == ids[:, None]
    hit = tl.max(match.to(tl.int32), axis=1) > 0
    way = tl.min(tl.where(match, ways[None, :], W), axis=1)
    slot = tl.where(hit, sets * W + way, trash)
    tl.store(hit_ptr + off, hit.to(tl.int8), mask=ok)
    tl.store(slot_ptr + off, slot, mask=ok)
    hm = ok & hit  # distinct ids: distinct hit slots, so plain read-modify-writes do not race
    tl.store(stamp_ptr + slot, tick, mask=hm)
    tl.store(uses_ptr + slot, tl.load(uses_ptr + slot, mask=hm, other=0) + 1, mask=hm)
    if PIN:
        tl.store(pins_ptr + slot, tl.load(pins_ptr + slot, mask=hm, other=0) + 1, mask=hm)
    if NEXT:
        tl.store(next_ptr + slot, tl.load(nu_ptr + off, mask=hm, other=0), mask=hm)
    tl.atomic_add(counts_ptr, tl.sum(ok.to(tl.int64), axis=0))
    tl.atomic_add(counts_ptr + 1, tl.sum(hm.to(tl.int64), axis=0))


@triton.jit
def _choose_kernel(sets_ptr, rank_ptr, tags_ptr, stamp_ptr, uses_ptr, pins_ptr, next_ptr, target_ptr,
                   counts_ptr, n, trash, tick,
                   W: tl.constexpr, BLOCK: tl.constexpr, POLICY: tl.constexpr):
    off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = off < n
    sets = tl.load(sets_ptr + off, mask=ok, other=0)
    rank = tl.load(rank_ptr + off, mask=ok, other=0)
    ways = tl.arange(0, W)
    at = sets[:, None] * W + ways[None, :]
    tags = tl.load(tags_ptr + at, mask=ok[:, None], other=-1)
    pinned = tl.load(pins_ptr + at, mask=ok[:, None], other=0) > 0
    stamp = tl.load(stamp_ptr + at, mask=ok[:, None], other=0)
    if POLICY == 0:
        score = stamp
    elif POLICY == 1:  # fewest uses, then least recent (stamps stay below 2**40)
        uses = tl.minimum(tl.load(uses_ptr + at, mask=ok[:, None], other=0), 1 << 16)
        score = (uses << 40) | stamp
    else:  # no known future use first (by recency), then the farthest known use
        upcoming = tl.load(next_ptr + at, mask=ok[:, None], other=_NO_USE)
        known = (upcoming > tick) & (upcoming < _NO_USE)
        score = tl.where(known, (1 << 41) + (1 << 40) - upcoming, stamp)
    score = tl.where(tags < 0, -1, score)
    score = tl.where(pinned, 1 << 57, score)
    score = score * W + ways[None, :]                          # distinct: ties go to the lower way
    # each way's position in its set's eviction order; the miss of rank k takes position k
    position = tl.sum((score[:, None, :] < score[:, :, None]).to(tl.int32), axis=2)   # [BLOCK, W]
    pick = tl.minimum(rank, W - 1)
    way = tl.sum(tl.where(position == pick[:, None], ways[None, :], 0), axis=1)
    usable = W - tl.sum(pinned.to(tl.int32), axis=1)
    take = ok & (rank < usable)
    evicts = take & (tl.sum(tl.where(ways[None, :] == way[:, None], tags, 0), axis=1) >= 0)
    tl.store(target_ptr + off, tl.where(take, sets * W + way, trash), mask=ok)
    tl.atomic_add(counts_ptr + 3, tl.sum(evicts.to(tl.int64), axis=0))


@triton.jit
def _write_kernel(order_ptr, target_ptr, ids_ptr, rows_ptr, nu_ptr, tags_ptr, data_ptr, stamp_ptr,
                  uses_ptr, pins_ptr, next_ptr, inserted_ptr, slot_ptr, counts_ptr, n, trash, tick,
                  ROW_BYTES: tl.constexpr, RB_PAD: tl.constexpr, BLOCK: tl.constexpr,
                  PIN: tl.constexpr, NEXT: tl.constexpr):
    off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = off < n
    src = tl.load(order_ptr + off, mask=ok, other=0)          # the miss's index in the caller's batch
    target = tl.load(target_ptr + off, mask=ok, other=trash)
    take = ok & (target != trash)
    tl.store(tags_ptr + target, tl.load(ids_ptr + src, mask=take, other=-1), mask=take)
    cols = tl.arange(0, RB_PAD)
    cm = take[:, None] & (cols < ROW_BYTES)[None, :]
    row = tl.load(rows_ptr + src[:, None] * ROW_BYTES + cols[None, :], mask=cm, other=0)
    tl.store(data_ptr + target[:, None] * ROW_BYTES + cols[None, :], row, mask=cm)
    tl.store(stamp_ptr + target, tick, mask=take)
    tl.store(uses_ptr + target, 1, mask=take)
    if NEXT:
        tl.store(next_ptr + target, tl.load(nu_ptr + src, mask=take, other=_NO_USE), mask=take)
    else:
        tl.store(next_ptr + target, _NO_USE, mask=take)
    if PIN:
        tl.store(pins_ptr + target, tl.load(pins_ptr + target, mask=take, other=0) + 1, mask=take)
    tl.store(inserted_ptr + src, take.to(tl.int8), mask=ok)
    tl.store(slot_ptr + src, target, mask=ok)
    inserted = tl.sum(take.to(tl.int64), axis=0)
    tl.atomic_add(counts_ptr + 2, inserted)
    tl.atomic_add(counts_ptr + 4, tl.sum(ok.to(tl.int64), axis=0) - inserted)


def probe(cache, ids: torch.Tensor, pin: bool, next_use: torch.Tensor | None):
    """RowCache.lookup's work after the tick advanced: (hit bool [N], slot int64 [N])."""
    n = len(ids)
    hit = torch.empty(n, dtype=torch.int8, device=ids.device)
    slot = torch.empty(n, dtype=torch.int64, device=ids.device)
    if n:
        block = 64
        _probe_kernel[(triton.cdiv(n, block),)](
            ids.contiguous(), cache.tags, cache.stamp, cache.uses, cache.pins, cache.next_use,
            next_use.contiguous() if next_use is not None else ids, hit, slot, cache._counts,
            n, cache.num_sets, cache.trash, cache.tick,
            W=cache.ways, BLOCK=block, PIN=pin, NEXT=next_use is not None)
    return hit.bool(), slot


def insert(cache, ids: torch.Tensor, rows: torch.Tensor, pin: bool, next_use: torch.Tensor | None):
    """RowCache.insert for distinct missing ids: (inserted bool [N], slot int64 [N])."""
    n = len(ids)
    inserted = torch.empty(n, dtype=torch.int8, device=ids.device)
    slot = torch.empty(n, dtype=torch.int64, device=ids.device)
    if n == 0:
        return inserted.bool(), slot
    sets = cache.set_of(ids)
    sorted_sets, order = torch.sort(sets, stable=True)                 # misses grouped by set
    rank = torch.arange(n, device=ids.device) - torch.searchsorted(sorted_sets, sorted_sets)
    target = torch.empty(n, dtype=torch.int64, device=ids.device)
    block = 32
    grid = (triton.cdiv(n, block),)
    _choose_kernel[grid](sorted_sets, rank, cache.tags, cache.stamp, cache.uses, cache.pins,
                         cache.next_use, target, cache._counts, n, cache.trash, cache.tick,
                         W=cache.ways, BLOCK=block, POLICY=POLICY_CODES[cache.policy])
    rows = rows.contiguous()
    _write_kernel[grid](order, target, ids.contiguous(), rows,
                        next_use.contiguous() if next_use is not None else ids, cache.tags, cache.data,
                        cache.stamp, cache.uses, cache.pins, cache.next_use, inserted, slot, cache._counts,
                        n, cache.trash, cache.tick, ROW_BYTES=cache.row_bytes,
                        RB_PAD=triton.next_power_of_2(cache.row_bytes), BLOCK=block, PIN=pin,
                        NEXT=next_use is not None)
    return inserted.bool(), slot
