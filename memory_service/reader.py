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

import ctypes
import logging
import math
import os
import threading
import time
from contextlib import contextmanager

import numpy as np

from .manifest import LOADING, PUBLISHED, READY, TableManifest
from . import chunk_map, huge_pages, row_check
from .store import DROPPING, StoreError, TableStore, chunk_key, manifest_key

logger = logging.getLogger("engram_memory")


class TableView:
    def __init__(self, manifest: TableManifest, txn, store: TableStore, base: int, limit: int, verify: bool = True):
        self.manifest = manifest
        if manifest.row_check != row_check.FORMAT:
            raise StoreError("FAILED_PRECONDITION", f"table {manifest.table} v{manifest.version} was stored "
                             "without per-row checksums (by engram-memory before 0.2), so its rows cannot be "
                             "checked and are not served: load it again (`engram-memory load`)")
        self.verify, self.salt = verify, row_check.salt(manifest.table, manifest.version)
        addresses, lengths, counts = [], [], []
        self.chunks_read = 0  # chunks located by a get, which reads the whole chunk (chunk_map.py)
        rb = manifest.row_bytes
        for index in range(manifest.num_chunks):  # once per snapshot, not per lookup
            key = chunk_key(manifest.table, manifest.version, index)
            rows = min(manifest.chunk_rows, manifest.stored_rows - index * manifest.chunk_rows)
            nbytes = row_check.value_bytes(rows, rb)
            address = chunk_map.locate(txn, store.pages, base, limit, key, nbytes)
            if address is None:
                buf = txn.get(key, db=store.rows)
                if buf is None:
                    raise StoreError("DATA_LOSS", f"{manifest.table} v{manifest.version}: chunk {index} is missing")
                if len(buf) != nbytes:
                    raise StoreError("DATA_LOSS", f"{manifest.table} v{manifest.version}: chunk {index} has "
                                     f"{len(buf)} B, not the {nbytes} B of {rows} rows and their checksums")
                address = chunk_map.address_of(buf)
                self.chunks_read += 1
            addresses.append(address)
            lengths.append(nbytes)
            counts.append(rows)
        if self.chunks_read:
            logger.warning("table %s v%d: %d of %d chunks located by reading them (the store has no chunk "
                           "map for them: written before it existed, or copied); reload the table to open "
                           "it without reading it", manifest.table, manifest.version, self.chunks_read,
                           manifest.num_chunks)
        addresses = np.array(addresses, dtype=np.int64)
        base = int(addresses.min())
        span = int((addresses + np.array(lengths)).max()) - base
        memory = (ctypes.c_char * span).from_address(base)  # the map pages this table lives in
        self.chunk_offsets = addresses - base
        self.shift = manifest.chunk_rows.bit_length() - 1  # chunk_rows is a power of two
        # the stored sums as one uint32 array over the span: chunk c's start at sum_index[c]
        # (chunk offsets are multiples of the page size, sums_offset of 8)
        self.sums = np.ndarray(shape=(span // 4,), dtype="<u4", buffer=memory)
        self.sum_index = (self.chunk_offsets + np.array([row_check.sums_offset(n, rb) for n in counts])) // 4
        # Two views of the span. `rows`: element i is the row_bytes bytes starting at byte i (dtype void,
        # stride 1), for a fancy index that returns a new array. `units`: the span as contiguous units
        # of g bytes, g the largest size dividing the row and every chunk's offset (chunks start 16 B
        # into 4 KiB pages), so np.take writes k = row_bytes / g units per row straight into a
        # caller's buffer. 256 B rows: g = 256, k = 1; 160 B rows: g = 32, k = 5.
        self.rows = np.ndarray(shape=(span - rb + 1,), dtype=np.dtype((np.void, rb)), buffer=memory, strides=(1,))
        self.rows.flags.writeable = False
        # each chunk is contiguous: one [rows, row_bytes] array per chunk for sorted batches (below)
        self.chunk_views = [np.ndarray((n, rb), dtype=np.uint8, buffer=memory, offset=int(o))
                            for o, n in zip(self.chunk_offsets, counts)]
        self.unit = math.gcd(rb, *map(int, self.chunk_offsets))
        self.per_row = rb // self.unit
        self.units = None
        if self.per_row <= 8:  # beyond that the units are too small to beat fancy index + copy
            self.units = np.ndarray(shape=(span // self.unit,), dtype=np.dtype((np.void, self.unit)),
                                    buffer=memory)
            self.unit_steps = np.arange(self.per_row)

    def check(self, row_ids: np.ndarray) -> np.ndarray:
        """The ids as this store's local rows (a shard subtracts its row_start); out-of-range ids
        raise, naming the id, its position and the valid range."""
        m = self.manifest
        start, stop = m.row_start, m.row_stop
        if row_ids.size:
            lo, hi = int(row_ids.min()), int(row_ids.max())
            if lo < start or hi >= stop:
                position = int(np.flatnonzero((row_ids < start) | (row_ids >= stop))[0])
                where = f"table {m.table} v{m.version}'s rows [0, {m.num_rows})" if m.shards == 1 else (
                    f"shard {m.shard} of {m.shards} of table {m.table} v{m.version}, which holds rows "
                    f"[{start}, {stop})")
                raise StoreError("INVALID_ARGUMENT", f"row id {int(row_ids[position])} at position "
                                 f"{position} is outside {where}")
        return row_ids - start if start else row_ids

    def _offsets(self, row_ids: np.ndarray) -> np.ndarray:
        chunk = row_ids >> self.shift
        return self.chunk_offsets[chunk] + (row_ids - (chunk << self.shift)) * self.manifest.row_bytes

    def _by_chunk(self, row_ids: np.ndarray, out: np.ndarray) -> bool:
        """Sorted batches (what clients send after deduplicating), rows not a divisor of the page
        alignment (e.g. 160 B): one contiguous np.take per chunk touched, 2.6 -> 2.2 ms per 65,536
        rows of 160 B here, where the strided fancy index below is slower. False: not worth it."""
        if len(row_ids) < 4096 or not bool(np.all(row_ids[1:] >= row_ids[:-1])):
            return False
        chunk = row_ids >> self.shift
        cuts = np.flatnonzero(chunk[1:] != chunk[:-1]) + 1
        if len(cuts) * 64 > len(row_ids):  # a few rows per chunk: per-call overhead would dominate
            return False
        local = row_ids & ((1 << self.shift) - 1)
        bounds = [0, *cuts.tolist(), len(row_ids)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            np.take(self.chunk_views[int(chunk[a])], local[a:b], axis=0, out=out[a:b], mode="clip")
        return True

    def gather_into(self, row_ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Rows of int64 ids [N] into the caller's uint8 [N, row_bytes]; out-of-range ids raise, and
        rows that fail their checksum raise DATA_LOSS (`out` then holds no row to use)."""
        local = self.check(row_ids)
        if not (self.per_row > 1 and self._by_chunk(local, out)):
            offsets = self._offsets(local)
            if self.units is None:
                out[...] = self.rows[offsets].view(np.uint8).reshape(out.shape)
            else:
                first = offsets // self.unit
                index = first if self.per_row == 1 else (first[:, None] + self.unit_steps).reshape(-1)
                # ids are checked above, so mode="clip" never clips; it spares np.take an extra buffer
                np.take(self.units, index, axis=0, out=out.reshape(-1).view(self.units.dtype), mode="clip")
        return self._verified(local, out)

    def gather(self, row_ids: np.ndarray) -> np.ndarray:
        """int64 [N] -> a new uint8 [N, row_bytes], in order."""
        if self.per_row == 1:
            return self.gather_into(row_ids, np.empty((len(row_ids), self.manifest.row_bytes), dtype=np.uint8))
        local = self.check(row_ids)  # whole rows in one fancy index beat k units per row (no copy after)
        out = np.empty((len(local), self.manifest.row_bytes), dtype=np.uint8)
        if not self._by_chunk(local, out):
            out = self.rows[self._offsets(local)].view(np.uint8).reshape(len(local), self.manifest.row_bytes)
        return self._verified(local, out)

    def _verified(self, local: np.ndarray, out: np.ndarray) -> np.ndarray:
        """`out` if every row's bytes match the sum stored with it (row_check.py); DATA_LOSS otherwise.
        `out` may be a client's segment, which its owner can change under us: rows that fail there
        are read again from the store into memory of ours, so only damage in the store is DATA_LOSS."""
        if not self.verify or not len(local):
            return out
        chunk = local >> self.shift
        stored = np.take(self.sums, self.sum_index[chunk] + (local & ((1 << self.shift) - 1)), mode="clip")
        bad = np.flatnonzero(stored != row_check.row_sums(out, local, self.salt))
        if not len(bad):
            return out
        again = self.rows[self._offsets(local[bad])].view(np.uint8).reshape(len(bad), self.manifest.row_bytes)
        bad = bad[row_check.row_sums(again, local[bad], self.salt) != stored[bad]]
        if not len(bad):
            raise StoreError("ABORTED", f"the rows of table {self.manifest.table} changed in their destination "
                             "while being written (another writer of the client's segment?): retry")
        m = self.manifest
        row = int(local[bad[0]])
        first = (row >> self.shift) << self.shift
        chunks = np.unique(chunk[bad])
        error = StoreError("DATA_LOSS", f"table {m.table} v{m.version}: {len(bad)} of {len(local)} rows fail "
                           f"their checksum, in {len(chunks)} chunk(s); first: row {row + m.row_start} in "
                           f"chunk {row >> self.shift} (rows [{first + m.row_start}, "
                           f"{min(first + m.chunk_rows, m.stored_rows) + m.row_start})). The store's bytes "
                           "are damaged: these rows are not served (read another replica, or reload the table)")
        error.corrupt_rows = len(bad)
        raise error


class Snapshot:
    def __init__(self, store: TableStore, huge: bool = False, verify: bool = True):
        self.store, self.verify = store, verify
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
                        raise StoreError("NOT_FOUND", f"table {table!r} v{manifest.version} is {manifest.status} "
                                         f"({done:.0%} of rows written); only ready or published "
                                         "versions serve reads")
                    assert manifest.status in (READY, PUBLISHED)
                    if self._base is None:  # from the manifest's own page (chunk_map.py)
                        self._base = chunk_map.map_base(self.txn, self.store.meta,
                                                        manifest_key(table, manifest.version), self._psize)
                        if self.huge:
                            huge_pages.advise(self._base, self.limit)
                    self.views[(table, manifest.version)] = view = TableView(
                        manifest, self.txn, self.store, self._base, self.limit, self.verify)
                    if version == 0:
                        self.views[key] = view
        return self.views[key]

    def close(self) -> None:
        self.views.clear()
        self.txn.abort()


class StoreReader:
    def __init__(self, store: TableStore, refresh_s: float = 0.05, huge_pages: str = "auto",
                 verify_rows: bool = True):
        """huge_pages: auto (when the store fits in half the memory), on or off; huge_pages.py.
        verify_rows: check every row read against its stored sum (row_check.py)."""
        self.store = store
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
            raise StoreError("DATA_LOSS", f"{self.store.path / 'data.mdb'} shrank to {size} B while serving; "
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
        snap = Snapshot(self.store, verify=self.verify_rows)
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
