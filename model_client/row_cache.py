"""RowCache: a set-associative cache of encoded table rows on one device (GPU HBM or host memory).

Row id r lives in set h(r) mod num_sets, in one of `ways` slots, h a 64-bit mix (multiply, xor-shift,
multiply, xor-shift, as splitmix64 does; a plain multiplicative hash left 40% of the sets empty for
some set counts); num_sets = capacity // (ways * row_bytes), so the cache holds what it is given.
Every operation is a handful of vectorized torch ops over the whole batch (no per-row Python):
probing gathers each id's set of tags and compares; inserting sorts the misses by set, ranks them
within their set, and gives the k-th miss of a set the k-th best victim of that set. Policies order
victims: empty slots first, then
  lru: least recently used;
  lfu: fewest uses, ties broken by least recent; counts halve every `decay_every` batches so that
       rows popular long ago age out (a frequency sketch with decay, per slot);
  tinylfu: rows with an announced use (as lookahead) are kept over all others, the soonest needed
       longest; the others by fewest recent reads in a count-min sketch of every id read
       (frequency_sketch.py: resident or not, 32 bytes a slot), then least recent. A miss scores
       the same way (its announced next use, else its estimate at this tick); the k-th best miss of
       a set meets the set's k-th victim and enters only if it scores higher (TinyLFU admission: a
       row read once does not displace one read often). Decode announces nothing: frequency alone
       (BENCHMARKS.md, issue 17);
  lookahead: rows with no known future use first (least recent first), then rows whose next known
       use is farthest. Future uses come from `announce` (rows of batches already admitted, e.g. the
       prompts of a prefill batch) and from the next_use given with lookup/insert. With no
       announcements it is LRU; announced far enough ahead it is Belady's optimum.
Batch semantics (which the brute-force reference in the tests and the hit-rate simulator share): a
batch is a set of distinct ids; hits are ids present when the batch starts; hits are touched, then
misses are inserted, all with the batch's tick.

Pinning: rows a step will read stay pinned until the step releases them. Pinned slots are never
victims; a miss whose set has no unpinned slot left is not inserted ("bypassed") and the caller
serves it from the rows it fetched: a prefetch larger than the free capacity never evicts or
overwrites a row still needed.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from kernels import use_triton

from .frequency_sketch import FrequencySketch
from .victim_order import NO_USE, miss_scores, policy_scores

POLICIES = ("lru", "lfu", "lookahead", "tinylfu")
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_MIX = -4658895280553007687     # 0xBF58476D1CE4E5B9, splitmix64's second multiplier


@dataclass
class CacheStats:
    lookups: int = 0
    hits: int = 0
    misses: int = 0
    inserts: int = 0
    evictions: int = 0
    bypassed: int = 0      # misses not cached because their set was full of pinned rows
    bytes_in: int = 0      # row bytes inserted from the tier below

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def add(self, other: "CacheStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class RowCache:
    def __init__(self, capacity_bytes: int, row_bytes: int, device="cpu", policy: str = "lru",
                 ways: int = 16, decay_every: int = 1024, pin_memory: bool = False, kernels: bool = True,
                 rows: bool = True):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")
        if row_bytes < 1 or ways < 1 or decay_every < 1:
            raise ValueError("row_bytes, ways and decay_every must be >= 1")
        slots = capacity_bytes // row_bytes
        if slots < ways:
            raise ValueError(f"capacity {capacity_bytes} B holds {slots} rows of {row_bytes} B, fewer than "
                             f"one set of {ways} ways")
        self.num_sets = slots // ways
        self.ways, self.row_bytes, self.policy, self.decay_every = ways, row_bytes, policy, decay_every
        self.kernels = kernels  # False: always these torch ops (a host-side cache on another thread)
        self.device = torch.device(device)
        n = self.num_sets * ways
        # One extra slot at index n takes the writes of rows that are not inserted, so no operation
        # has to compact a batch by a mask: on a GPU that would stall the CPU on every call.
        self.trash = n
        # rows=False: an index alone (tags and policy state), whose rows live elsewhere: a graph-captured
        # decode keeps the device cache's index on the host (staged_step.py) and writes rows on the GPU
        self.holds_rows = rows
        # pinned (a host cache's rows, or a host-side index): copies to and from the GPU run async
        at = {"device": self.device, "pin_memory": pin_memory and self.device.type == "cpu" and torch.cuda.is_available()}
        self.data = torch.empty(n + 1 if rows else 0, row_bytes, dtype=torch.uint8, **at)
        self.tags = torch.full((n + 1,), -1, dtype=torch.int64, **at)
        self.stamp = torch.zeros(n + 1, dtype=torch.int64, **at)
        self.uses = torch.zeros(n + 1, dtype=torch.int64, **at)
        self.pins = torch.zeros(n + 1, dtype=torch.int32, **at)
        self.next_use = torch.full((n + 1,), NO_USE, dtype=torch.int64, **at)  # a tick
        self.sketch = FrequencySketch(n, self.device) if policy == "tinylfu" else None
        self.tick = 0
        self._counts = torch.zeros(6, dtype=torch.int64, device=self.device)  # lookups, hits, inserts,
        # evictions, bypassed, (unused): summed on the device, read by `stats`

    @property
    def capacity_rows(self) -> int:
        return self.num_sets * self.ways

    @property
    def capacity_bytes(self) -> int:
        return self.capacity_rows * self.row_bytes

    @property
    def stats(self) -> CacheStats:
        lookups, hits, inserts, evictions, bypassed, _ = (int(x) for x in self._counts.tolist())
        return CacheStats(lookups, hits, lookups - hits, inserts, evictions, bypassed, inserts * self.row_bytes)

    def set_of(self, ids: torch.Tensor) -> torch.Tensor:
        x = ids * _GOLDEN                      # int64 products wrap; the masks make the shifts logical
        x = x ^ ((x >> 31) & ((1 << 33) - 1))
        x = x * _MIX
        x = x ^ ((x >> 29) & ((1 << 35) - 1))
        return ((x >> 32) & 0x7FFFFFFF) % self.num_sets

    # ---- batch operations -----------------------------------------------------------------------------
    def lookup(self, ids: torch.Tensor, pin: bool = False, next_use: torch.Tensor | None = None):
        """Distinct int64 ids [N] -> (hit bool [N], slot int64 [N]: the row's slot, or `trash` on a
        miss). Starts a batch: advances the tick and touches the hits (pinning them if asked).
        next_use [N]: each id's next known use as a future tick (NO_USE: none), for `lookahead`."""
        self.tick += 1
        if self.policy == "lfu" and self.tick % self.decay_every == 0:
            self.uses >>= 1
        ids = ids.to(self.device)
        if self.sketch is not None:
            self.sketch.record(ids)
        if self._kernels(ids):
            from kernels import cache
            return cache.probe(self, ids, pin, None if next_use is None else next_use.to(self.device))
        sets = self.set_of(ids)
        match = self._rows_of(self.tags, sets) == ids[:, None]             # [N, W]
        hit = match.any(dim=1)
        slot = torch.where(hit, sets * self.ways + match.int().argmax(dim=1), self.trash)
        self.stamp.index_fill_(0, slot, self.tick)
        self.uses.index_add_(0, slot, hit.long())
        if pin:
            self.pins.index_add_(0, slot, hit.int())
        if next_use is not None:
            self.next_use.index_copy_(0, slot, next_use.to(self.device))
        self._counts[0] += len(ids)
        self._counts[1] += hit.sum()
        return hit, slot

    def insert(self, ids: torch.Tensor, rows: torch.Tensor, pin: bool = False,
               next_use: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Insert distinct missing ids [N] with their rows [N, row_bytes] (after `lookup` of the same
        batch). Returns (inserted bool [N], slot int64 [N], `trash` where not inserted); ids not
        inserted were bypassed. rows None, or a cache that holds no rows: only choose the slots (an
        index whose caller writes the rows, or a replay that counts)."""
        ids = ids.to(self.device)
        rows = None if rows is None else rows.to(self.device, non_blocking=True)
        n = len(ids)
        if n == 0:
            return torch.zeros(0, dtype=torch.bool, device=self.device), torch.zeros(0, dtype=torch.int64, device=self.device)
        if self._kernels(ids):
            from kernels import cache
            return cache.insert(self, ids, rows, pin, None if next_use is None else next_use.to(self.device))
        sets = self.set_of(ids)
        order = torch.argsort(sets, stable=True)                            # misses grouped by set
        if self.sketch is not None:  # tinylfu: the best first within a set, to meet the first victim
            merit = miss_scores(self, ids, next_use)
            best_first = torch.argsort(merit, descending=True, stable=True)
            order = best_first[torch.argsort(sets[best_first], stable=True)]
        sorted_sets = sets[order]
        position = torch.arange(n, device=self.device)
        starts = torch.ones(n, dtype=torch.bool, device=self.device)
        starts[1:] = sorted_sets[1:] != sorted_sets[:-1]
        first = torch.cummax(torch.where(starts, position, 0), dim=0).values
        rank = position - first                                             # k-th miss of its set
        chosen, usable, victim_score = self._victims(sorted_sets, rank.clamp(max=self.ways - 1))
        ok = rank < usable
        if self.sketch is not None:  # admission: only a miss that outscores its victim (a tie stays)
            ok &= victim_score < merit[order]
        target = torch.where(ok, chosen, self.trash)
        self._counts[3] += ((self.tags[chosen] >= 0) & ok).sum()
        self.tags.index_copy_(0, target, ids[order])   # index_* ops: the fast paths on CPU and GPU
        if rows is not None and self.holds_rows:
            self.data.index_copy_(0, target, rows[order])
        self.stamp.index_fill_(0, target, self.tick)
        self.uses.index_fill_(0, target, 1)
        if next_use is None:
            self.next_use.index_fill_(0, target, NO_USE)
        else:
            self.next_use.index_copy_(0, target, next_use.to(self.device)[order])
        if pin:
            self.pins.index_add_(0, target, ok.int())
        self.tags[self.trash] = -1
        inserted = torch.empty(n, dtype=torch.bool, device=self.device)
        slot = torch.empty(n, dtype=torch.int64, device=self.device)
        inserted[order], slot[order] = ok, target
        inserted_count = ok.sum()
        self._counts[2] += inserted_count
        self._counts[4] += n - inserted_count
        return inserted, slot

    def _kernels(self, ids: torch.Tensor) -> bool:
        """Triton kernels for CUDA caches (kernels.cache), these PyTorch ops (the reference) elsewhere."""
        return (self.kernels and use_triton(ids) and self.ways & (self.ways - 1) == 0
                and self.sketch is None)  # tinylfu: these torch ops on every device

    def _rows_of(self, per_slot: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
        """[S, W]: a per-slot array's values for each set's ways; one contiguous row per set, so an
        index_select of rows (measured 3x faster on CPU than indexing slot by slot)."""
        return per_slot[:-1].view(self.num_sets, self.ways).index_select(0, sets)

    def _victims(self, sets: torch.Tensor, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the rank-th best victim slot of each set [S], the number of unpinned slots of each set, and
        that victim's score: -1 empty, else the policy's key)."""
        score, usable = self._victim_scores(sets)
        if self.device.type != "cpu":
            way = torch.gather(torch.argsort(score, dim=1), 1, rank[:, None]).squeeze(1)
        else:  # most misses are their set's first (rank 0): an argmin; sort only the others' sets
            # (measured on 8,192 ids: argsort of [N, 16] took 2.2 ms of a 5.5 ms probe and insert)
            way = score.argmin(dim=1)
            deeper = (rank > 0).nonzero().squeeze(1)
            if len(deeper):
                way[deeper] = torch.gather(torch.argsort(score[deeper], dim=1), 1, rank[deeper, None]).squeeze(1)
        victim_score = torch.gather(score, 1, way[:, None]).squeeze(1) // self.ways   # floor: -1 stays -1
        return sets * self.ways + way, usable, victim_score

    def _victim_scores(self, sets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(each set's ways scored [S, W], distinct, lower = evicted first, pinned slots last; and the
        number of unpinned slots of each set)."""
        pinned = self._rows_of(self.pins, sets) > 0
        score = policy_scores(self, sets)
        score = torch.where(self._rows_of(self.tags, sets) < 0, -1, score)
        score = torch.where(pinned, 1 << 57, score)
        # way index in the low bits: scores are distinct, so a plain (faster) argsort orders them as a
        # stable one would, ties going to the lower way
        score = score * self.ways + torch.arange(self.ways, device=self.device)
        return score, self.ways - pinned.sum(dim=1)

    def gather(self, slots: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.index_select(self.data, 0, slots, out=out) if out is not None else self.data[slots]

    def release(self, slots: torch.Tensor) -> None:
        """Unpin slots pinned by lookup(pin=True) or insert(pin=True), once per pin (pass the slots
        those calls returned: misses and bypassed rows point at the trash slot, which absorbs them)."""
        slots = slots.to(self.device)
        self.pins.index_add_(0, slots, torch.full(slots.shape, -1, dtype=torch.int32, device=self.device))
        self.pins[self.trash] = 0

    def announce(self, ids: torch.Tensor, when: int) -> None:
        """Distinct ids a batch at tick `when` (> tick) will read: cached ones keep the earlier of
        their known next use and `when` (the lookahead policy protects them until then)."""
        ids = ids.to(self.device)
        sets = self.set_of(ids)
        match = self._rows_of(self.tags, sets) == ids[:, None]
        slot = torch.where(match.any(dim=1), sets * self.ways + match.int().argmax(dim=1), self.trash)
        current = self.next_use[slot]
        valid = (current > self.tick) & (current < when)
        self.next_use.index_copy_(0, slot, torch.where(valid, current, when))
        self.next_use[self.trash] = NO_USE

    def load_index(self, other: "RowCache", non_blocking: bool = False) -> None:
        """Take over another cache's index of the same geometry (tags, the state its policy reads,
        tick, counters): the device cache's index moves to the host for graph-captured decode, and
        back after. Only what the policy reads moves (LRU: 8 of 33 bytes a slot besides the tags)."""
        if (other.num_sets, other.ways, other.policy) != (self.num_sets, self.ways, self.policy):
            raise ValueError("load_index needs a cache of the same sets, ways and policy")
        policy_state = {"lru": (), "lfu": ("uses",), "lookahead": ("next_use",), "tinylfu": ("next_use",)}[self.policy]
        for name in ("tags", "stamp", "pins", *policy_state, "_counts"):
            getattr(self, name).copy_(getattr(other, name), non_blocking=non_blocking)
        if self.sketch is not None:
            self.sketch.load(other.sketch, non_blocking)
        self.tick = other.tick

    def clear(self) -> None:
        """Forget every row (a new table version is published); counters keep counting."""
        self.tags.fill_(-1)
        self.pins.zero_()
        self.uses.zero_()
        self.stamp.zero_()
        self.next_use.fill_(NO_USE)
        if self.sketch is not None:
            self.sketch.clear()

    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        """Presence without touching anything (for tests and tools)."""
        ids = ids.to(self.device)
        return (self._rows_of(self.tags, self.set_of(ids)) == ids[:, None]).any(dim=1)


