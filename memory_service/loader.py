"""Load Engram tables into a TableStore: one table version per Engram layer.

Rows stream in chunks: a background thread produces and encodes chunk i+1 (and i+2) while the main
thread writes chunk i into LMDB, so a load runs near whichever is slower, the row source or the disk.
Memory stays bounded by a few 16 MiB chunks whatever the table size.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import lmdb
from tqdm import tqdm

from core import checkpoint_format, row_check
from core.config import ROW_DTYPES, EngramConfig
from core.geometry import TableGeometry
from core.manifest import TableManifest, table_name
from core.row_format import RowFormat
from core.store import StoreError, TableStore, chunk_rows_for

from .checkpoint import DEFAULT_TENSOR, CheckpointRows, RandomRows

PREFETCH_CHUNKS = 3


def load_layer(store: TableStore, config: EngramConfig, layer_id: int, source, tokenizer_sha256: str,
               compressed_vocab_size: int, publish: bool = True, progress: bool = True,
               chunk_rows: int | None = None, shard: int = 0, shards: int = 1) -> TableManifest:
    """Load one layer's table (or its shard `shard` of `shards` row ranges) into the store."""
    manifest = TableManifest.for_layer(config, layer_id, tokenizer_sha256, compressed_vocab_size,
                                       chunk_rows or chunk_rows_for(config.row_bytes),
                                       source.description, time.time())
    manifest.shard, manifest.shards = shard, shards
    manifest = TableManifest.from_json(manifest.to_json())  # validates the shard fields
    manifest = store.create_version(manifest)
    first = manifest.row_start
    fmt = RowFormat(config.row_dtype, config.head_dim)

    def encoded(index: int) -> tuple[int, bytes]:
        start = index * manifest.chunk_rows
        stop = min(start + manifest.chunk_rows, manifest.stored_rows)
        return index, fmt.encode(source.rows(first + start, first + stop)).tobytes()

    part = "" if manifest.shards == 1 else f" shard {manifest.shard}/{manifest.shards}"
    bar = tqdm(total=manifest.stored_rows, unit="rows", unit_scale=True, disable=not progress,
               desc=f"{manifest.table} v{manifest.version}{part} "
                    f"({manifest.stored_rows * manifest.row_bytes / 2**30:.2f} GiB)")
    with ThreadPoolExecutor(max_workers=2) as pool, bar:
        def ordered_chunks():
            futures = [pool.submit(encoded, i) for i in range(min(PREFETCH_CHUNKS, manifest.num_chunks))]
            for index in range(manifest.num_chunks):
                chunk = futures[index].result()
                if index + PREFETCH_CHUNKS < manifest.num_chunks:
                    futures.append(pool.submit(encoded, index + PREFETCH_CHUNKS))
                futures[index] = None  # let the chunk's bytes go once written
                yield chunk
        try:
            store.write_chunks(manifest, ordered_chunks(), progress=bar.update)
        except StoreError as e:
            raise _abandoned(store, manifest, e) from None
    store.finish(manifest.table, manifest.version)
    if publish:
        store.publish(manifest.table, manifest.version)
    return store.manifest(manifest.table, manifest.version)


def _abandoned(store: TableStore, manifest: TableManifest, error: StoreError) -> StoreError:
    """The failed load's error, after dropping its partial version (what was published before
    keeps serving); if even the drop fails (a full disk can refuse that too), say how to finish it."""
    try:
        store.drop(manifest.table, manifest.version)
        what = f"the partial {manifest.table} v{manifest.version} was dropped"
    except (StoreError, lmdb.Error):
        what = (f"the partial {manifest.table} v{manifest.version} is left as loading: remove it with "
                f"`engram-memory drop --db {store.path} --table {manifest.table} --version {manifest.version}`")
    current = store.current_version(manifest.table)
    serving = f"v{current} keeps serving" if current else "no version of it was published before"
    return StoreError(error.reason, f"{error}; {what}; {serving}")


@dataclass
class LoadConfig:
    db: str = field(default="", metadata={"help": "LMDB table store directory (created if absent); or --target"})
    target: str = field(default="", metadata={
        "help": "load into a running memory service at host:port (or unix:PATH, its admin socket) through "
                "its AdminService instead of into --db"})
    token_file: str = field(default="", metadata={
        "help": "with --target: file holding the service's admin token (its --admin-token-file)"})
    tls_ca: str = field(default="", metadata={"help": "with --target: PEM CA that signed the service's certificate"})
    wait_s: float = field(default=0.0, metadata={
        "help": "with --target: keep trying this many seconds while the service is not up yet"})
    config: str = field(default="", metadata={
        "help": "EngramConfig preset (demo, paper-27b, paper-40b, deepseek-v4.1) or JSON file (default: the "
                "config a --from checkpoint of `engram-memory train` records, else demo); a config that "
                "differs from the checkpoint's is refused"})
    checkpoint: str = field(default="", metadata={
        "flag": "--from", "metavar": "CKPT",
        "help": "checkpoint with one [rows, head_dim] embedding per Engram layer (.safetensors; "
                ".pt/.bin need torch)"})
    random_init: bool = field(default=False, metadata={
        "help": "fill the tables with seeded random rows instead (deterministic, any size)"})
    seed: int = field(default=0, metadata={"help": "seed of --random-init rows"})
    dtype: str = field(default="", metadata={
        "help": "row dtype to store: float32, bfloat16, float16 or fp8-e4m3 (default: the config's)"})
    tensor: str = field(default=DEFAULT_TENSOR, metadata={
        "help": "checkpoint tensor name of layer {L}'s rows"})
    layers: list[int] = field(default_factory=list, metadata={
        "type": int, "help": "only these Engram layers (default: all)"})
    publish: bool = field(default=True, metadata={"help": "publish each table once loaded and verified"})
    if_absent: bool = field(default=False, metadata={
        "help": "skip a layer whose published table was built for this config (idempotent loads: "
                "docker-compose's loader); a published table for another config is an error"})
    commit_mb: int = field(default=256, metadata={
        "help": "MiB of rows per LMDB commit: bounds the loader's memory; `info` shows progress per commit"})
    chunk_rows: int = field(default=0, metadata={
        "help": "rows per LMDB value, a power of two (0: the largest within 16 MiB)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    shard: str = field(default="", metadata={
        "metavar": "I/N", "help": "load only shard I of N equal row ranges of each table (a sharded "
                                  "cluster: one store per shard; see cluster.py)"})

    def shard_pair(self) -> tuple[int, int]:
        if not self.shard:
            return 0, 1
        index, count = (int(x) for x in self.shard.split("/"))
        return index, count

    def __post_init__(self):
        if bool(self.db) == bool(self.target):
            raise ValueError("load: give exactly one of --db DIR (a store on this machine) or --target HOST:PORT "
                             "(a running service)")
        if self.target and not self.publish:
            raise ValueError("load: --no-publish needs --db (a service finishes a version by publishing it)")
        if (self.token_file or self.tls_ca or self.wait_s) and not self.target:
            raise ValueError("load: --token-file, --tls-ca and --wait-s go with --target")
        if bool(self.checkpoint) == bool(self.random_init):
            raise ValueError("LoadConfig: give exactly one source, --from CKPT or --random-init")
        if self.dtype and self.dtype not in ROW_DTYPES:
            raise ValueError(f"LoadConfig.dtype must be one of {', '.join(ROW_DTYPES)} (got {self.dtype!r})")
        if self.commit_mb < 1:
            raise ValueError(f"LoadConfig.commit_mb must be >= 1 (got {self.commit_mb})")
        if self.chunk_rows < 0 or self.chunk_rows & (self.chunk_rows - 1):
            raise ValueError(f"LoadConfig.chunk_rows must be 0 or a power of two (got {self.chunk_rows})")
        try:
            index, count = self.shard_pair()
        except ValueError:
            raise ValueError(f"LoadConfig.shard must look like I/N, e.g. 0/2 (got {self.shard!r})") from None
        if not 0 <= index < count:
            raise ValueError(f"LoadConfig.shard: I must be in [0, N) (got {self.shard!r})")
        if "{L}" not in self.tensor:
            raise ValueError(f"LoadConfig.tensor must contain {{L}} for the layer id (got {self.tensor!r})")


def run_load(cfg: LoadConfig) -> int:
    from core.tokenizer import CompressedTokenizer

    config = checkpoint_format.config_for(cfg.config, cfg.checkpoint)
    if cfg.dtype:
        config = config.replace(row_dtype=cfg.dtype)
    layers = cfg.layers or config.layer_ids
    unknown = [layer for layer in layers if layer not in config.layer_ids]
    if unknown:
        raise ValueError(f"LoadConfig.layers: {unknown} are not Engram layers of this config {config.layer_ids}")
    tokenizer = CompressedTokenizer(config.tokenizer)
    if cfg.target:
        from core.credentials import read_secret

        from .remote_store import RemoteStore
        store = RemoteStore(cfg.target, read_secret(cfg.token_file, "--token-file"), cfg.tls_ca, cfg.wait_s,
                            commit_bytes=cfg.commit_mb << 20)
    else:
        store = TableStore(cfg.db, bulk=True, commit_bytes=cfg.commit_mb << 20)
    geometry = TableGeometry.from_config(config)
    try:
        for layer in layers:
            if cfg.if_absent and store.current_version(table_name(layer)):
                existing = store.manifest(table_name(layer))
                existing.check_compatible(config, tokenizer.sha256, tokenizer.num_compressed)
                if existing.row_dtype != config.row_dtype:
                    raise ValueError(f"{existing.table} is published as {existing.row_dtype}, not {config.row_dtype}")
                if existing.row_check == row_check.FORMAT:
                    print(f"{existing.table} v{existing.version} is already published for this config: skipped")
                    continue
                print(f"{existing.table} v{existing.version} was stored without per-row checksums: loading it again")
            if cfg.checkpoint:
                source = CheckpointRows(cfg.checkpoint, cfg.tensor.replace("{L}", str(layer)),
                                        geometry.rows(layer), config.head_dim)
            else:
                source = RandomRows(cfg.seed, layer, config.head_dim)
            t0 = time.perf_counter()
            shard, shards = cfg.shard_pair()
            m = load_layer(store, config, layer, source, tokenizer.sha256, tokenizer.num_compressed,
                           publish=cfg.publish, progress=cfg.progress, chunk_rows=cfg.chunk_rows or None,
                           shard=shard, shards=shards)
            seconds = time.perf_counter() - t0
            size = m.stored_rows * m.row_bytes
            part = "" if m.shards == 1 else f" (shard {m.shard}/{m.shards}: rows [{m.row_start:,}, {m.row_stop:,}))"
            print(f"{m.table} v{m.version}{part}: {m.stored_rows:,} rows x {m.row_bytes} B = {size / 2**30:.2f} GiB "
                  f"in {seconds:.1f} s ({size / seconds / 2**20:,.0f} MiB/s), {m.status}, checksum {m.checksum or '-'}")
    finally:
        store.close()
    return 0
