"""StoreReader: the read path, a vectorized gather from LMDB's memory map.

A Snapshot is one long-lived read transaction (buffers=True) plus, per table version, the address of
each chunk inside the memory map. Rows are gathered with one numpy fancy index over a read-only view
of the map span that holds the table's chunks: element i of the view is the `row_bytes` bytes starting
at byte i (dtype void, stride 1), so row r is element chunk_offset[r // chunk_rows] +
(r % chunk_rows) * row_bytes. No per-key get and no copy of a chunk; measured at or above a plain
in-RAM `np.take` (bench/store.py).

The reader picks up newly published versions by checking LMDB's last transaction id at most every
`refresh_s`; a retired snapshot's transaction is closed once the last lookup using it finishes.
"""
from __future__ import annotations

import ctypes
import threading
import time
from contextlib import contextmanager

import numpy as np

from .manifest import LOADING, PUBLISHED, READY, TableManifest
from .store import DROPPING, StoreError, TableStore, chunk_key


class TableView:
    def __init__(self, manifest: TableManifest, txn, rows_db):
        self.manifest = manifest
        addresses, lengths = [], []
        for index in range(manifest.num_chunks):  # once per snapshot, not per lookup
            buf = txn.get(chunk_key(manifest.table, manifest.version, index), db=rows_db)
            if buf is None:
                raise StoreError("DATA_LOSS", f"{manifest.table} v{manifest.version}: chunk {index} is missing")
            addresses.append(np.frombuffer(buf, dtype=np.uint8).ctypes.data)
            lengths.append(len(buf))
        addresses = np.array(addresses, dtype=np.int64)
        base = int(addresses.min())
        span = int((addresses + np.array(lengths)).max()) - base
        memory = (ctypes.c_char * span).from_address(base)  # the map pages this table lives in
        self.chunk_offsets = addresses - base
        self.rows = np.ndarray(shape=(span - manifest.row_bytes + 1,),
                               dtype=np.dtype((np.void, manifest.row_bytes)), buffer=memory, strides=(1,))
        self.rows.flags.writeable = False
        self.shift = manifest.chunk_rows.bit_length() - 1  # chunk_rows is a power of two

    def gather(self, row_ids: np.ndarray) -> np.ndarray:
        """int64 [N] -> uint8 [N, row_bytes], in order; out-of-range ids raise StoreError."""
        m = self.manifest
        if row_ids.size:
            lo, hi = int(row_ids.min()), int(row_ids.max())
            if lo < 0 or hi >= m.num_rows:
                position = int(np.flatnonzero((row_ids < 0) | (row_ids >= m.num_rows))[0])
                raise StoreError("INVALID_ARGUMENT", f"row id {int(row_ids[position])} at position "
                                 f"{position} is outside table {m.table} v{m.version}'s rows "
                                 f"[0, {m.num_rows})")
        chunk = row_ids >> self.shift
        offsets = self.chunk_offsets[chunk] + (row_ids - (chunk << self.shift)) * m.row_bytes
        return self.rows[offsets].view(np.uint8).reshape(len(row_ids), m.row_bytes)


class Snapshot:
    def __init__(self, store: TableStore):
        self.store = store
        self.txn = store.env.begin(buffers=True)
        self.txnid = self.txn.id()
        self.views: dict[tuple[str, int], TableView] = {}
        self.users, self.retired = 0, False
        self.lock = threading.Lock()

    def view(self, table: str, version: int) -> TableView:
        key = (table, version)
        if key not in self.views:
            with self.lock:
                if key not in self.views:
                    manifest = self.store._manifest(self.txn, table, version)
                    if manifest.status in (LOADING, DROPPING):
                        done = manifest.rows_written / manifest.num_rows
                        raise StoreError("NOT_FOUND", f"table {table!r} v{manifest.version} is {manifest.status} "
                                         f"({done:.0%} of rows written); only ready or published "
                                         "versions serve reads")
                    assert manifest.status in (READY, PUBLISHED)
                    self.views[(table, manifest.version)] = view = TableView(manifest, self.txn, self.store.rows)
                    if version == 0:
                        self.views[key] = view
        return self.views[key]

    def close(self) -> None:
        self.views.clear()
        self.txn.abort()


class StoreReader:
    def __init__(self, store: TableStore, refresh_s: float = 0.05):
        self.store = store
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._snapshot = Snapshot(store)
        self._checked = time.monotonic()

    @contextmanager
    def snapshot(self):
        """The newest snapshot, held for the duration of the block."""
        with self._lock:
            self._maybe_refresh()
            snap = self._snapshot
            snap.users += 1
        try:
            yield snap
        finally:
            with self._lock:
                snap.users -= 1
                if snap.retired and snap.users == 0:
                    snap.close()

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.refresh_s:
            return
        self._checked = now
        if self.store.env.info()["last_txnid"] == self._snapshot.txnid:
            return
        old, self._snapshot = self._snapshot, Snapshot(self.store)
        old.retired = True
        if old.users == 0:
            old.close()

    def lookup(self, table: str, version: int, row_ids: np.ndarray) -> tuple[TableManifest, np.ndarray]:
        with self.snapshot() as snap:
            view = snap.view(table, version)
            return view.manifest, view.gather(row_ids)

    def close(self) -> None:
        with self._lock:
            self._snapshot.retired = True
            if self._snapshot.users == 0:
                self._snapshot.close()
