"""StoreReader: the read path, a vectorized gather from LMDB's memory map.

A Snapshot is one long-lived read transaction (buffers=True) plus, per table version, the address of
each chunk inside the memory map. Row r lives at byte chunk_offset[r // chunk_rows] +
(r % chunk_rows) * row_bytes of the map span that holds the table's chunks, so a batch is one
vectorized `np.take` over that span (viewed as fixed-size units) straight into the caller's buffer.
No per-key get and no copy of a chunk; measured at or above a plain in-RAM `np.take` (bench/store.py).

The reader picks up newly published versions by checking LMDB's last transaction id at most every
`refresh_s`; a retired snapshot's transaction is closed once the last lookup using it finishes.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager

import numpy as np

from . import chunk_map, huge_pages
from .manifest import LOADING, PUBLISHED, READY, TableManifest
from .page_reader import PageReader
from .store import DROPPING, StoreError, TableStore, manifest_key
from .table_view import TableView

logger = logging.getLogger("engram_memory")


class Snapshot:
    def __init__(self, store: TableStore, huge: bool = False, verify: bool = True,
                 pages: PageReader | None = None, pages_above: int = 0):
        """pages: read ahead of the gather the pages of tables of more than pages_above bytes."""
        self.store, self.verify = store, verify
        self.pages, self.pages_above = pages, pages_above
        self.huge = huge  # advise huge pages over the map's used bytes (huge_pages.py)
        self.txn = store.env.begin(buffers=True)
        self.txnid = self.txn.id()
        psize = store.env.stat()["psize"]
        self.limit = (store.env.info()["last_pgno"] + 1) * psize  # bytes of the file in use
        self._base, self._psize = None, psize
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
                        done = manifest.rows_written / manifest.stored_rows
                        raise StoreError("not_found", f"table {table!r} v{manifest.version} is {manifest.status} "
                                         f"({done:.0%} of rows written); only ready or published "
                                         "versions serve reads")
                    assert manifest.status in (READY, PUBLISHED)
                    if self._base is None:  # from the manifest's own page (chunk_map.py)
                        self._base = chunk_map.map_base(self.txn, self.store.meta,
                                                        manifest_key(table, manifest.version), self._psize)
                        if self.huge:
                            huge_pages.advise(self._base, self.limit)
                    big = manifest.stored_rows * manifest.row_bytes > self.pages_above
                    self.views[(table, manifest.version)] = view = TableView(
                        manifest, self.txn, self.store, self._base, self.limit, self.verify,
                        self.pages if big else None)
                    if version == 0:
                        self.views[key] = view
        return self.views[key]

    def close(self) -> None:
        self.views.clear()
        self.txn.abort()


class StoreReader:
    def __init__(self, store: TableStore, refresh_s: float = 0.05, huge_pages: str = "auto",
                 verify_rows: bool = True, read_mode: str = "off", read_depth: int = 32, read_bytes: int = 4096,
                 read_above: int = 0):
        """huge_pages: auto (when the store fits in half the memory), on or off; huge_pages.py.
        verify_rows: check every row read against its stored sum (row_check.py).
        read_mode: advise or threads reads the pages a batch needs from tables of more than read_above
        bytes before the gather, all at once (advise) or read_depth at a time, at most read_bytes
        each (page_reader.py); off leaves them to the gather's page faults."""
        self.store = store
        self.pages = None if read_mode == "off" else PageReader(store.path / "data.mdb", read_depth, read_bytes,
                                                                read_mode)
        self.read_above = read_above
        self.refresh_s = refresh_s
        self.huge_pages, self.verify_rows = huge_pages, verify_rows
        # the file itself, to see it shrink: a read beyond its end through the map would kill the
        # process (SIGBUS), so every snapshot handed out first checks the file still holds its pages
        self._file = os.open(store.path / "data.mdb", os.O_RDONLY | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._snapshot = self._new_snapshot()
        self._checked = time.monotonic()

    @contextmanager
    def snapshot(self, fresh: bool = False):
        """The newest snapshot, held for the duration of the block; fresh=True looks for new
        versions now instead of at most every refresh_s."""
        with self._lock:
            if fresh:
                self._checked = 0.0
            self._maybe_refresh()
            snap = self._snapshot
            self._check_size(snap.limit)
            snap.users += 1
        try:
            yield snap
        finally:
            with self._lock:
                snap.users -= 1
                if snap.retired and snap.users == 0:
                    snap.close()

    def _check_size(self, limit: int) -> None:
        size = os.fstat(self._file).st_size
        if size < limit:
            raise StoreError("damaged", f"{self.store.path / 'data.mdb'} shrank to {size} B while serving; "
                             f"its LMDB pages need {limit} B: nothing more is read from it. Restore the file "
                             "and restart the server")

    def check_file(self) -> None:
        """DATA_LOSS if data.mdb lost pages the current snapshot uses: call before any read of the
        store (its catalog too), since touching a lost page through the map kills the process."""
        self._check_size(self._snapshot.limit)

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.refresh_s:
            return
        self._checked = now
        # a read transaction's id is the last committed one (env.info() would say the same, but
        # py-lmdb 3.0's info() grows the heap by ~4 B a call: 0.3 MB an hour at one call per 50 ms)
        with self.store.env.begin() as txn:
            if txn.id() == self._snapshot.txnid:
                return
        old, self._snapshot = self._snapshot, self._new_snapshot()
        old.retired = True
        if old.users == 0:
            old.close()

    def _new_snapshot(self) -> Snapshot:
        snap = Snapshot(self.store, verify=self.verify_rows, pages=self.pages, pages_above=self.read_above)
        snap.huge = huge_pages.wanted(self.huge_pages, snap.limit)
        return snap

    def lookup(self, table: str, version: int, row_ids: np.ndarray) -> tuple[TableManifest, np.ndarray]:
        with self.snapshot() as snap:
            view = snap.view(table, version)
            return view.manifest, view.gather(row_ids)

    def close(self) -> None:
        with self._lock:
            self._snapshot.retired = True
            if self._snapshot.users == 0:
                self._snapshot.close()
            if self._file >= 0:
                os.close(self._file)
                self._file = -1
            if self.pages is not None:
                self.pages.close()
                self.pages = None
