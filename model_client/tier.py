"""Tier: the one batched interface of every storage tier, and `fetch`, which reads through a list of them.

    get_many(table, ids, out, version) -> found   distinct int64 ids [N] -> the rows of found ids in
                                                  the caller's uint8 out [N, row_bytes]; found: bool [N].
                                                  A tier holds one version of each table (the one it was
                                                  last switched to); asked for another, it finds nothing.
    put_many(table, ids, rows, version)           offer rows found below; a tier keeps those of its version
    switch(table, version)                        `version` is read from now on: a cache drops the table's
                                                  rows, a mirror copies the new version whole
    close()

The last tier of a stack is a backing store (StoreTier: the co-located LMDB; ServiceTier: the
memory service). It holds every version, finds every valid id or raises (BadRowIds for one outside
the table; never a zero row for a row that should exist), is read-only (put_many raises TypeError),
and describes its tables:

    describe(table, version=0, fresh=False) -> TableManifest   version 0: the published one now
"""
from __future__ import annotations

from typing import Protocol

import torch

from core.manifest import TableManifest


class Tier(Protocol):
    name: str

    def get_many(self, table: str, ids: torch.Tensor, out: torch.Tensor, version: int) -> torch.Tensor: ...

    def put_many(self, table: str, ids: torch.Tensor, rows: torch.Tensor, version: int) -> None: ...

    def switch(self, table: str, version: int) -> None: ...

    def close(self) -> None: ...


class BackingStore(Tier, Protocol):
    def describe(self, table: str, version: int = 0, fresh: bool = False) -> TableManifest: ...


def fetch(table: str, ids: torch.Tensor, out: torch.Tensor, tiers: list[Tier], version: int) -> None:
    """Rows of distinct ids at `version` into out, from the first tier holding each; rows found below
    a tier are offered to it on the way up. The last tier must be a backing store."""
    missing = torch.ones(len(ids), dtype=torch.bool)
    for depth, tier in enumerate(tiers):
        todo = missing.nonzero().squeeze(1)
        if len(todo) == 0:
            break
        whole = len(todo) == len(ids)  # the first tier asked: it writes straight into out
        buffer = out if whole and out.device.type == "cpu" else torch.empty(len(todo), out.shape[1], dtype=torch.uint8)
        found = tier.get_many(table, ids if whole else ids[todo], buffer, version).cpu()
        if buffer is not out:  # rows the tier did not find are rewritten by a lower tier below
            out[todo[found]] = buffer[found].to(out.device)
        for upper in tiers[:depth]:
            upper.put_many(table, ids[todo[found]], buffer[found], version)
        missing[todo[found]] = False
    if missing.any():
        raise LookupError(f"table {table}: {int(missing.sum())} rows found in no tier (the last tier must "
                          "be a backing store)")
