"""TableView: one table version inside a read transaction, gathered with one vectorized index.

Row r lives at byte chunk_offset[r // chunk_rows] + (r % chunk_rows) * row_bytes of the map span
that holds the table's chunks, so a batch is one `np.take` over that span (viewed as fixed-size
units) straight into the caller's buffer, and every row is checked against the sum stored with it
(row_check.py) before anyone may use it.
"""
from __future__ import annotations

import ctypes
import logging
import math

import numpy as np

from . import chunk_map, row_check
from .errors import BadRowIds
from .manifest import TableManifest
from .page_reader import PageReader, pages_of
from .store import StoreError, TableStore, chunk_key

logger = logging.getLogger("engram_memory")


class TableView:
    def __init__(self, manifest: TableManifest, txn, store: TableStore, base: int, limit: int, verify: bool = True,
                 pages: PageReader | None = None):
        """pages: read the pages a batch needs ahead of the gather, many at once (page_reader.py)."""
        self.manifest, self.pages = manifest, pages
        if manifest.row_check != row_check.FORMAT:
            raise StoreError("not_ready", f"table {manifest.table} v{manifest.version} was stored "
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
                    raise StoreError("damaged", f"{manifest.table} v{manifest.version}: chunk {index} is missing")
                if len(buf) != nbytes:
                    raise StoreError("damaged", f"{manifest.table} v{manifest.version}: chunk {index} has "
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
        self.file_start = int(addresses.min()) - base  # the span's offset in data.mdb
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
        if pages is not None and verify:  # every row's check reads its sum: keep them all cached
            pages.warm((manifest.table, manifest.version, self.file_start), self.file_start + self.sum_index * 4,
                       np.array(counts, dtype=np.int64) * 4)

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
                raise BadRowIds(f"row id {int(row_ids[position])} at position "
                                 f"{position} is outside {where}")
        return row_ids - start if start else row_ids

    def _offsets(self, row_ids: np.ndarray) -> np.ndarray:
        chunk = row_ids >> self.shift
        return self.chunk_offsets[chunk] + (row_ids - (chunk << self.shift)) * self.manifest.row_bytes

    def _read_pages(self, local: np.ndarray) -> None:
        """The pages under the rows and under their checksums, read ahead of the gather."""
        if self.pages is None or not len(local):
            return
        chunk = local >> self.shift
        sums = (self.sum_index[chunk] + (local & ((1 << self.shift) - 1))) * 4
        self.pages.read(np.union1d(pages_of(self.file_start + self._offsets(local), self.manifest.row_bytes),
                                   pages_of(self.file_start + sums, 4) if self.verify else []).astype(np.int64))

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
        self._read_pages(local)
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
        self._read_pages(local)
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
            raise StoreError("changed", f"the rows of table {self.manifest.table} changed in their destination "
                             "while being written (another writer of the client's segment?): retry")
        m = self.manifest
        row = int(local[bad[0]])
        first = (row >> self.shift) << self.shift
        chunks = np.unique(chunk[bad])
        error = StoreError("damaged", f"table {m.table} v{m.version}: {len(bad)} of {len(local)} rows fail "
                           f"their checksum, in {len(chunks)} chunk(s); first: row {row + m.row_start} in "
                           f"chunk {row >> self.shift} (rows [{first + m.row_start}, "
                           f"{min(first + m.chunk_rows, m.stored_rows) + m.row_start})). The store's bytes "
                           "are damaged: these rows are not served (read another replica, or reload the table)")
        error.corrupt_rows = len(bad)
        raise error
