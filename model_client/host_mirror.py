"""HostMirror: whole tables in pinned host memory, for the Engram layers a fetch cannot hide behind.

In decode, step t+1's row ids are known only once token t is sampled, so an Engram layer at index 1
has one block of compute to hide its misses behind (0.7 ms on an H200 at batch 512, DESIGN.md
section 3): less than a gRPC round trip plus the Python around it, and the fetch thread's Python
competes with the model's kernel launches for the GIL. The paper's own offloading keeps every row in
host DRAM. A mirror does that for the earliest Engram layers whose tables fit its budget: it copies
each table from the tier below (the memory service) when the worker starts, a quarter-million rows
per request with a progress bar, and serves reads with one `index_select` on the calling thread:
no RPC, no thread hand-off. Later layers have many blocks of compute to hide a service round trip
and keep reading the service. The mirror holds one pinned version per table; when a new version
is published, `switch` copies it at the next step boundary (that step waits for the copy: ~2 s for
the demo's 1.23 GiB layer through shared memory) and the old copy serves until the new one is whole.
"""
from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from core.errors import BadRowIds

logger = logging.getLogger("engram_memory")

BATCH_ROWS = 1 << 18  # 32 MiB of 128 B rows per request, well under the service's 256 MiB message


class HostMirror:
    name = "host-mirror"

    def __init__(self, capacity_bytes: int, tables: list[str], source, versions: dict[str, int],
                 pin_memory: bool = False, progress: bool = True):
        """tables: in the order they are needed (earliest Engram layer first); each is mirrored if
        it fits in what is left of capacity_bytes, the first that does not fit ends the list."""
        self.source, self.pin_memory, self.progress = source, pin_memory, progress
        self.data: dict[str, torch.Tensor] = {}
        self.versions: dict[str, int] = {}
        self.rows_served = 0
        self.rows_by_table: dict[str, int] = {}  # rows served per table (worker metrics)
        left = capacity_bytes
        for table in tables:
            m = source.describe(table, versions[table])
            if m.num_rows * m.row_bytes > left:
                logger.info("host mirror: %s (%.2f GiB) does not fit in the %.2f GiB left; it stays on the "
                            "service", table, m.num_rows * m.row_bytes / 2**30, left / 2**30)
                break
            left -= m.num_rows * m.row_bytes
            self._copy(table, versions[table])

    def holds(self, table: str) -> bool:
        return table in self.data

    @property
    def nbytes(self) -> int:
        return sum(t.numel() for t in self.data.values())

    def switch(self, table: str, version: int) -> None:
        """A mirrored table's new version is copied whole; the old copy serves until then."""
        if table in self.data:
            self._copy(table, version)

    def _copy(self, table: str, version: int) -> None:
        m = self.source.describe(table, version)
        data = torch.empty(m.num_rows, m.row_bytes, dtype=torch.uint8, pin_memory=self.pin_memory)
        with tqdm(total=m.num_rows, unit="rows", unit_scale=True, disable=not self.progress,
                  desc=f"host mirror {table} v{m.version}") as bar:
            for start in range(0, m.num_rows, BATCH_ROWS):
                stop = min(start + BATCH_ROWS, m.num_rows)
                self.source.get_many(table, torch.arange(start, stop), data[start:stop], m.version)
                bar.update(stop - start)
        self.data[table], self.versions[table] = data, m.version

    def get_many(self, table: str, ids: torch.Tensor, out: torch.Tensor, version: int) -> torch.Tensor:
        data = self.data.get(table)
        if data is None or version != self.versions[table]:
            return torch.zeros(len(ids), dtype=torch.bool)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(data)):  # host tensors: no device sync
            bad = ids[(ids < 0) | (ids >= len(data))][0]
            raise BadRowIds(f"row id {int(bad)} is outside table {table} v{version}'s rows [0, {len(data)})")
        torch.index_select(data, 0, ids, out=out)
        self.rows_served += len(ids)
        self.rows_by_table[table] = self.rows_by_table.get(table, 0) + len(ids)
        return torch.ones(len(ids), dtype=torch.bool)

    def put_many(self, table: str, ids: torch.Tensor, rows: torch.Tensor, version: int) -> None:
        """Nothing to add: a mirrored table holds every row already."""

    def close(self) -> None:
        self.data.clear()
