"""The LMDB environment of a table store: opened with the settings the read path needs, and refused
when its file is not a store or is shorter than the pages LMDB says are in use."""
from __future__ import annotations

import os
from pathlib import Path

import lmdb

from .errors import StoreError

DEFAULT_MAP_SIZE = 1 << 40      # 1 TiB of address space; the file only grows as rows are written


def open_env(path: str | os.PathLike, readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE,
             bulk: bool = False) -> lmdb.Environment:
    """Open (or create) the environment. Never share one across fork: open it in each process.

    bulk: skip the meta-page fsync at each commit (LMDB's NOMETASYNC: a system crash may undo the
    last commits but never corrupts the store). Loads sync once before they publish; measured
    290 -> 630 MiB/s for a demo-table load on this machine's disk."""
    path = Path(path)
    if readonly and not (path / "data.mdb").is_file():
        raise StoreError("not_found", f"no table store at {path} (expected {path / 'data.mdb'})")
    if not readonly:
        path.mkdir(parents=True, exist_ok=True)
    # readahead off: rows are read at random, and readahead would evict hot pages for tables > RAM.
    try:
        env = lmdb.open(str(path), map_size=map_size, max_dbs=4, max_readers=1024, readonly=readonly,
                        readahead=False, lock=True, subdir=True, metasync=not bulk)
    except lmdb.Error as e:
        raise StoreError("damaged", f"{path / 'data.mdb'} cannot be opened as an LMDB table store: {e}") from None
    env.reader_check()  # clear reader slots left by killed processes
    check_file_size(env, path)
    return env


def check_file_size(env: lmdb.Environment, path: Path) -> None:
    """Refuse a data.mdb shorter than the pages its meta page says are in use: reading a row from
    the missing part through the memory map would kill the reading process (SIGBUS)."""
    in_use = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = (path / "data.mdb").stat().st_size
    if size < in_use:
        env.close()
        raise StoreError("damaged", f"{path / 'data.mdb'} is truncated: it has {size} B, but its LMDB meta "
                         f"page says {in_use} B are in use. Restore it from a copy or load the tables again")


def write_error(path: Path, env: lmdb.Environment, manifest, error: lmdb.Error) -> StoreError:
    """A failed load commit as one line naming the store and, when the disk is full (LMDB reports
    that as EIO from its commit's writes), the free bytes and the bytes the version still needs."""
    import shutil

    from . import row_check
    free = shutil.disk_usage(path).free
    rows_left = manifest.stored_rows - manifest.rows_written
    need = row_check.value_bytes(rows_left, manifest.row_bytes) + 4 * env.stat()["psize"]
    if free < max(need, 64 << 20) or "Input/output" in str(error) or "No space" in str(error):
        return StoreError("too_large", f"the disk holding {path} is full ({free / 2**20:,.1f} MiB "
                          f"free): {manifest.table} v{manifest.version} needs about {need / 2**20:,.1f} MiB more "
                          f"for its last {rows_left:,} rows ({error})")
    return StoreError("internal", f"writing {manifest.table} v{manifest.version} into {path} failed: {error}")
