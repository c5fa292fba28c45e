"""TableStore: Engram tables in one LMDB environment on local disk.

Layout (justified by bench/store.py, see BENCHMARKS.md): a table version's rows are cut into chunks
of `chunk_rows` rows (a power of two, <= 16 MiB per chunk), one LMDB value per chunk. LMDB keeps a
large value in one run of contiguous overflow pages of its memory map, so a reader gathers rows with
one vectorized numpy index over the map (reader.py): no per-key `get`, no copy of the chunk.

Named databases:
  meta:  b"manifest/<table>/<version:8 BE>" -> TableManifest JSON
         b"current/<table>"                  -> published version (8 BE)
  rows:  b"<table>\\0<version:8 BE><chunk:8 BE>" -> the chunk's rows (chunk_rows * row_bytes; the last
                                              may be short), then one checksum per row (row_check.py)
  crc:   same key as rows                    -> crc32 of the chunk's value (4 BE)
  pages: same key as rows                    -> the chunk's file offset and fingerprint (chunk_map.py)

Versions move LOADING -> READY -> PUBLISHED. A load commits every ~256 MiB, so a killed load leaves a
LOADING version that `info` lists and `drop` removes; readers only ever see READY or PUBLISHED versions,
and publishing flips `current/<table>` in one transaction: readers see the old version or the new one.
"""
from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import lmdb

from . import chunk_map, row_check
from .environment import DEFAULT_MAP_SIZE, open_env, write_error
from .errors import StoreError, checked_table_name  # noqa: F401 (imported from here across the project)
from .manifest import LOADING, PUBLISHED, READY, TableManifest
from .store_keys import chunk_key, chunk_rows_for, current_key, manifest_key, u64  # noqa: F401 (re-exported)

COMMIT_BYTES = 256 << 20         # bounds a load's dirty pages: one commit per 256 MiB of rows
DROPPING = "dropping"


def _named_version(action: str, table: str, version: int) -> None:
    """Version 0 means "the published one" to readers; a write must name its version (found by
    fuzzing: publishing version 0 wrote a manifest under 0 and unpublished the table)."""
    if version < 1:
        raise StoreError("bad_request", f"{action} of table {table!r} needs a version >= 1 "
                         f"(got {version}); `info` lists the versions")


class TableStore:
    def __init__(self, path: str | os.PathLike, readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE,
                 bulk: bool = False, commit_bytes: int = COMMIT_BYTES):
        self.path = Path(path)
        self.commit_bytes = commit_bytes
        self.env = open_env(path, readonly, map_size, bulk)
        self.meta = self.env.open_db(b"meta", create=not readonly)
        self.rows = self.env.open_db(b"rows", create=not readonly)
        self.crc = self.env.open_db(b"crc", create=not readonly)
        try:  # stores written before chunk maps existed have no `pages`: readers fall back to get
            self.pages = self.env.open_db(b"pages", create=not readonly)
        except lmdb.NotFoundError:
            self.pages = None

    def close(self) -> None:
        self.env.close()

    # ---- catalog ------------------------------------------------------------------------------------
    def manifests(self, table: str | None = None) -> list[TableManifest]:
        """Every version's manifest (of one table, or of all), ordered by table then version."""
        with self.env.begin() as txn:
            return self._manifests(txn, table)

    def _manifests(self, txn, table: str | None = None) -> list[TableManifest]:
        prefix = b"manifest/" + (table.encode() + b"/" if table else b"")
        out = []
        cursor = txn.cursor(db=self.meta)
        if cursor.set_range(prefix):
            for key, value in cursor:
                if not bytes(key).startswith(prefix):
                    break
                try:
                    out.append(TableManifest.from_json(bytes(value)))
                except ValueError as e:
                    raise StoreError("damaged", f"{self.path / 'data.mdb'}: the manifest stored under "
                                     f"{bytes(key)[:80]!r} is damaged ({e})") from None
        return out

    def current_version(self, table: str, txn=None) -> int:
        if txn is None:
            with self.env.begin() as own:
                return self.current_version(table, own)
        value = txn.get(current_key(table), db=self.meta)
        return struct.unpack(">Q", value)[0] if value else 0

    def manifest(self, table: str, version: int = 0) -> TableManifest:
        """A version's manifest; version 0 is the published one."""
        with self.env.begin() as txn:
            return self._manifest(txn, table, version)

    def _manifest(self, txn, table: str, version: int) -> TableManifest:
        if version == 0:
            version = self.current_version(table, txn)
            if version == 0:
                known = sorted({m.table for m in self._manifests(txn)})
                raise StoreError("not_found", f"table {table!r} has no published version "
                                 f"(tables: {', '.join(known) or 'none'})")
        value = txn.get(manifest_key(table, version), db=self.meta)
        if value is None:
            versions = [m.version for m in self._manifests(txn, table)]
            if not versions:
                known = sorted({m.table for m in self._manifests(txn)})
                raise StoreError("not_found", f"table {table!r} does not exist (tables: {', '.join(known) or 'none'})")
            raise StoreError("not_found", f"table {table!r} has no version {version} (versions: {versions})")
        try:
            return TableManifest.from_json(bytes(value))
        except ValueError as e:
            raise StoreError("damaged", f"{self.path / 'data.mdb'}: the manifest of {table} v{version} is "
                             f"damaged ({e})") from None

    # ---- writing ------------------------------------------------------------------------------------
    def create_version(self, manifest: TableManifest) -> TableManifest:
        """Register a new LOADING version (the next number for this table) and return its manifest."""
        with self.env.begin(write=True, db=self.meta) as txn:
            versions = [m.version for m in self._manifests(txn, manifest.table)]
            manifest.version = max(versions, default=0) + 1
            manifest.status, manifest.rows_written, manifest.checksum = LOADING, 0, ""
            manifest.row_check = row_check.FORMAT  # the store decides how rows are checked
            txn.put(manifest_key(manifest.table, manifest.version), manifest.to_json().encode())
        return manifest

    def write_chunks(self, manifest: TableManifest, chunks, progress=None) -> None:
        """Write (chunk_index, row bytes) pairs, committing every `commit_bytes`; each chunk must be
        whole (chunk_rows rows, fewer only for the last chunk). Each row's checksum is stored with it."""
        pending, pending_rows, keys = 0, 0, []
        salt = row_check.salt(manifest.table, manifest.version)
        txn = self.env.begin(write=True)
        try:
            for index, rows in chunks:
                self._check_chunk(manifest, index, len(rows))
                key = chunk_key(manifest.table, manifest.version, index)
                data = row_check.chunk_value(rows, index * manifest.chunk_rows, manifest.row_bytes, salt)
                txn.put(key, data, db=self.rows)
                txn.put(key, struct.pack(">I", zlib.crc32(data)), db=self.crc)
                keys.append(key)
                pending += len(data)
                pending_rows += len(rows) // manifest.row_bytes
                if progress is not None:
                    progress(len(rows) // manifest.row_bytes)
                if pending >= self.commit_bytes:
                    self._bump_rows_written(txn, manifest, pending_rows)
                    txn.commit()
                    self._record_pages(keys)
                    txn, pending, pending_rows, keys = self.env.begin(write=True), 0, 0, []
            self._bump_rows_written(txn, manifest, pending_rows)
            txn.commit()
            self._record_pages(keys)
        except lmdb.Error as e:  # LMDB reports a full disk as EIO from its commit's writes
            txn.abort()
            raise write_error(self.path, self.env, manifest, e) from None
        except BaseException:
            txn.abort()
            raise

    def _record_pages(self, keys: list[bytes]) -> None:
        """Note where just-committed chunks live in the file (their pages are still cached, so the
        get's pre-faulting costs memory reads, not disk reads); see chunk_map.py."""
        if self.pages is None or not keys:
            return
        psize = self.env.stat()["psize"]
        with self.env.begin(buffers=True) as txn:
            entries = [(key, chunk_map.entry_for(key, txn.get(key, db=self.rows), psize)) for key in keys]
        with self.env.begin(write=True, db=self.pages) as txn:
            for key, entry in entries:
                txn.put(key, entry)

    def _check_chunk(self, manifest: TableManifest, index: int, nbytes: int) -> None:
        if not 0 <= index < manifest.num_chunks:
            raise StoreError("bad_request", f"chunk {index} is outside table {manifest.table} "
                             f"v{manifest.version}'s chunks [0, {manifest.num_chunks})")
        rows = min(manifest.chunk_rows, manifest.stored_rows - index * manifest.chunk_rows)
        if nbytes != rows * manifest.row_bytes:
            raise StoreError("bad_request", f"chunk {index} of {manifest.table} must hold {rows} rows "
                             f"x {manifest.row_bytes} B = {rows * manifest.row_bytes} B; got {nbytes} B")

    def _bump_rows_written(self, txn, manifest: TableManifest, rows: int) -> None:
        current = self._manifest(txn, manifest.table, manifest.version)
        if current.status != LOADING:
            raise StoreError("not_ready", f"{manifest.table} v{manifest.version} is "
                             f"{current.status}, not loading: it takes no more rows")
        current.rows_written = min(current.stored_rows, current.rows_written + rows)
        manifest.rows_written = current.rows_written
        txn.put(manifest_key(manifest.table, manifest.version), current.to_json().encode(), db=self.meta)

    def chunk_checksum(self, txn, manifest: TableManifest) -> tuple[str, list[int]]:
        """blake2b-128 over the chunks' crc32s in order (and the row geometry); the chunks missing."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(struct.pack(">QQQ", manifest.stored_rows, manifest.row_bytes, manifest.chunk_rows))
        missing = []
        for index in range(manifest.num_chunks):
            crc = txn.get(chunk_key(manifest.table, manifest.version, index), db=self.crc)
            if crc is None:
                missing.append(index)
            else:
                digest.update(crc)
        return digest.hexdigest(), missing

    def finish(self, table: str, version: int) -> TableManifest:
        """Check that a loading version holds every chunk, record its checksum, mark it READY."""
        _named_version("finish", table, version)
        with self.env.begin(write=True) as txn:
            manifest = self._finish(txn, table, version)
        return manifest

    def _finish(self, txn, table: str, version: int) -> TableManifest:
        manifest = self._manifest(txn, table, version)
        if manifest.status == DROPPING:
            raise StoreError("not_ready", f"{table} v{version} is being dropped")
        if manifest.status != LOADING:
            return manifest
        checksum, missing = self.chunk_checksum(txn, manifest)
        if missing:
            raise StoreError("not_ready", f"{table} v{version} is incomplete: "
                             f"{len(missing)} of {manifest.num_chunks} chunks missing "
                             f"(first: chunk {missing[0]}, rows from {missing[0] * manifest.chunk_rows})")
        manifest.status, manifest.checksum, manifest.rows_written = READY, checksum, manifest.stored_rows
        txn.put(manifest_key(table, version), manifest.to_json().encode(), db=self.meta)
        return manifest

    def publish(self, table: str, version: int, expected_checksum: str = "") -> int:
        """Make `version` the one readers see (finishing it first if it is still loading); returns
        the previously published version (0: none)."""
        _named_version("publish", table, version)
        self.env.sync(True)  # the rows are on disk before any reader can be pointed at them
        with self.env.begin(write=True) as txn:
            manifest = self._finish(txn, table, version)
            if expected_checksum and expected_checksum != manifest.checksum:
                # the caller's stated precondition does not hold; the stored rows are as written
                raise StoreError("not_ready", f"{table} v{version} checksum {manifest.checksum} differs "
                                 f"from the expected {expected_checksum}")
            previous = self.current_version(table, txn)
            if previous and previous != version:
                old = self._manifest(txn, table, previous)
                old.status = READY
                txn.put(manifest_key(table, previous), old.to_json().encode(), db=self.meta)
            manifest.status = PUBLISHED
            txn.put(manifest_key(table, version), manifest.to_json().encode(), db=self.meta)
            txn.put(current_key(table), u64(version), db=self.meta)
        return previous if previous != version else 0

    def drop(self, table: str, version: int, force: bool = False) -> None:
        """Remove a version: mark it dropping (invisible to readers), delete its chunks in bounded
        transactions, then its manifest. Re-running finishes a drop that was interrupted."""
        _named_version("drop", table, version)
        with self.env.begin(write=True) as txn:
            manifest = self._manifest(txn, table, version)
            if self.current_version(table, txn) == version:
                if not force:
                    raise StoreError("not_ready", f"{table} v{version} is the published version; "
                                     "publish another first or force the drop")
                txn.delete(current_key(table), db=self.meta)
            manifest.status = DROPPING
            txn.put(manifest_key(table, version), manifest.to_json().encode(), db=self.meta)
        batch = max(1, self.commit_bytes // (manifest.chunk_rows * manifest.row_bytes))
        for start in range(0, manifest.num_chunks, batch):
            with self.env.begin(write=True) as txn:
                for index in range(start, min(start + batch, manifest.num_chunks)):
                    key = chunk_key(table, version, index)
                    txn.delete(key, db=self.rows)
                    txn.delete(key, db=self.crc)
                    if self.pages is not None:
                        txn.delete(key, db=self.pages)
        with self.env.begin(write=True, db=self.meta) as txn:
            txn.delete(manifest_key(table, version))

    def disk_bytes(self) -> int:
        return (self.path / "data.mdb").stat().st_size

    def free_bytes(self) -> int:
        """Bytes of pages inside data.mdb that hold nothing (freed by drops; LMDB reuses them)."""
        psize = self.env.stat()["psize"]
        with self.env.begin() as txn:
            used = sum(st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                       for st in [self.env.stat()] + [txn.stat(db) for db in (self.meta, self.rows, self.crc,
                                                                              self.pages) if db is not None])
        in_use = self.env.info()["last_pgno"] + 1 - 2  # the two meta pages
        return max(0, in_use - used) * psize

