"""`engram-memory info`: what a table store holds, partial loads included."""
from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass, field

from core import row_check
from core.manifest import LOADING
from core.store import TableStore, chunk_key


@dataclass
class InfoConfig:
    db: str = field(default="", metadata={"required": True, "help": "LMDB table store directory"})
    json: bool = field(default=False, metadata={"help": "print the manifests as JSON lines"})
    verify: bool = field(default=False, metadata={
        "help": "re-read every chunk of every complete version and compare its crc32 and every row's "
                "checksum (reads all rows)"})


def verify(store: TableStore, manifest) -> list[int]:
    """Chunks whose bytes no longer match the crc32 written with them, or holding a row whose bytes
    no longer match its checksum."""
    bad = []
    salt = row_check.salt(manifest.table, manifest.version)
    with store.env.begin(buffers=True) as txn:
        for index in range(manifest.num_chunks):
            key = chunk_key(manifest.table, manifest.version, index)
            data, crc = txn.get(key, db=store.rows), txn.get(key, db=store.crc)
            rows = min(manifest.chunk_rows, manifest.stored_rows - index * manifest.chunk_rows)
            if data is None or crc is None or zlib.crc32(data) != struct.unpack(">I", crc)[0] or (
                    manifest.row_check == row_check.FORMAT and (
                        len(data) != row_check.value_bytes(rows, manifest.row_bytes) or
                        len(row_check.bad_rows(data, index * manifest.chunk_rows, rows, manifest.row_bytes, salt)))):
                bad.append(index)
    return bad


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 1 << 30 else f"{nbytes / 2**20:.1f} MiB"


def run_info(cfg: InfoConfig) -> int:
    store = TableStore(cfg.db, readonly=True)
    try:
        manifests = store.manifests()
        if cfg.json:
            for m in manifests:
                print(m.to_json())
            return 0
        free = store.free_bytes()
        reuse = (f" ({_size(free)} of it free pages of dropped versions: LMDB reuses them for the next "
                 "loads, the file does not shrink)") if free >= 1 << 20 else ""
        print(f"table store {store.path.resolve()}: {_size(store.disk_bytes())} on disk{reuse}, "
              f"{len(manifests)} table version(s)")
        if not manifests:
            print("no tables yet: load some with `engram-memory load --db DIR --config demo --random-init`")
            return 0
        print(f"{'table':<10}{'ver':>4}  {'status':<10}{'rows':>14}  {'dtype':<9}{'row B':>6}{'size':>11}"
              f"  {'checksum':<34}{'created (UTC)':<18}source")
        failed = 0
        for m in manifests:
            status = m.status
            if status == LOADING:
                status += f" {m.rows_written / m.stored_rows:.0%}"
            created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(m.created_at))
            print(f"{m.table:<10}{m.version:>4}  {status:<10}{m.stored_rows:>14,}  {m.row_dtype:<9}{m.row_bytes:>6}"
                  f"{m.stored_rows * m.row_bytes / 2**30:>7.2f} GiB  {m.checksum or '-':<34}{created:<18}{m.source}")
            if m.shards > 1:
                print(f"    shard {m.shard} of {m.shards}: rows [{m.row_start:,}, {m.row_stop:,}) of {m.num_rows:,}")
            if m.row_check != row_check.FORMAT:
                print("    not served: stored without per-row checksums (engram-memory before 0.2); load it again")
            if cfg.verify and m.status != LOADING:
                bad = verify(store, m)
                failed += bool(bad)
                print(f"    verify: {'OK, every chunk matches its crc32' if not bad else f'{len(bad)} corrupt chunk(s), first {bad[0]}'}")
        partial = [m for m in manifests if m.status == LOADING]
        if partial:
            print(f"\n{len(partial)} partial load(s) (killed or still running); remove with "
                  "`engram-memory drop --db DIR --table T --version V`")
        return 1 if failed else 0
    finally:
        store.close()


@dataclass
class DropConfig:
    db: str = field(default="", metadata={"required": True, "help": "LMDB table store directory"})
    table: str = field(default="", metadata={"required": True, "help": "table name, e.g. layer1"})
    version: int = field(default=0, metadata={"required": True, "type": int, "help": "version number (see `info`)"})
    force: bool = field(default=False, metadata={"help": "also drop the published version"})


def run_drop(cfg: DropConfig) -> int:
    store = TableStore(cfg.db)
    try:
        store.drop(cfg.table, cfg.version, force=cfg.force)
    finally:
        store.close()
    print(f"dropped {cfg.table} v{cfg.version}")
    return 0
