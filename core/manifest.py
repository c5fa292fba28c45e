"""TableManifest: everything that makes a table's rows valid for a model, stored with the rows.

A table is valid only with the exact tokenizer, normalizer, seed, layer ids, vocab sizes, heads and
orders it was trained with; any mismatch silently returns wrong rows. So the manifest carries the
whole EngramConfig, the layer, the tokenizer's sha256 and compressed vocab size, and the row layout,
and `check_compatible` refuses a client whose config differs, naming the field.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .config import EngramConfig
from .geometry import TableGeometry

LOADING, READY, PUBLISHED = "loading", "ready", "published"

# Fields that decide which row a token reads or how its bytes decode. hidden_size, hc_mult and
# kernel_size shape the module around the table, not the table, so they are not compared.
ROW_ADDRESS_FIELDS = ("tokenizer", "max_ngram_size", "engram_vocab_size", "n_embed_per_ngram",
                      "n_head_per_ngram", "layer_ids", "pad_id", "seed", "row_dtype")


def table_name(layer_id: int) -> str:
    return f"layer{layer_id}"


def shard_bounds(num_rows: int, shards: int) -> list[int]:
    """Row-range shard boundaries: shard i holds rows [b[i], b[i+1]), b[i] = i * num_rows // shards.
    Row ids are hashes spread uniformly over each sub-table, so equal ranges get equal load."""
    return [i * num_rows // shards for i in range(shards + 1)]


@dataclass
class TableManifest:
    table: str
    layer_id: int
    config: dict                 # EngramConfig.to_dict()
    tokenizer_sha256: str
    compressed_vocab_size: int
    row_dtype: str
    head_dim: int
    row_bytes: int
    num_rows: int
    chunk_rows: int              # rows per LMDB value (see store.py)
    source: str                  # "random-init seed=S" or the checkpoint path and tensor name
    created_at: float
    version: int = 0
    status: str = LOADING
    checksum: str = ""           # blake2b-128 over all row bytes in order, hex
    rows_written: int = 0
    extra: dict = field(default_factory=dict)
    shard: int = 0               # this store holds rows [row_start, row_stop) of the table:
    shards: int = 1              # shard `shard` of `shards` equal row ranges (cluster.py)
    row_check: str = ""          # how each stored row is checked on read (row_check.FORMAT); "": not at all

    @classmethod
    def for_layer(cls, config: EngramConfig, layer_id: int, tokenizer_sha256: str,
                  compressed_vocab_size: int, chunk_rows: int, source: str, created_at: float):
        geometry = TableGeometry.from_config(config)
        return cls(table=table_name(layer_id), layer_id=layer_id, config=config.to_dict(),
                   tokenizer_sha256=tokenizer_sha256, compressed_vocab_size=compressed_vocab_size,
                   row_dtype=config.row_dtype, head_dim=config.head_dim, row_bytes=config.row_bytes,
                   num_rows=geometry.rows(layer_id), chunk_rows=chunk_rows, source=source,
                   created_at=created_at)

    def __post_init__(self):
        if self.chunk_rows < 1 or self.chunk_rows & (self.chunk_rows - 1):
            raise ValueError(f"TableManifest.chunk_rows must be a power of two (got {self.chunk_rows})")
        if self.num_rows < 1:
            raise ValueError(f"TableManifest.num_rows must be >= 1 (got {self.num_rows})")
        if not 1 <= self.shards <= self.num_rows or not 0 <= self.shard < self.shards:
            raise ValueError(f"TableManifest.shard must be in [0, shards) and shards in [1, num_rows] "
                             f"(got shard {self.shard} of {self.shards})")
        config = self.engram_config()
        if self.layer_id not in config.layer_ids:
            raise ValueError(f"TableManifest.layer_id {self.layer_id} is not in config.layer_ids "
                             f"{config.layer_ids}")
        expected = {"row_dtype": config.row_dtype, "head_dim": config.head_dim,
                    "row_bytes": config.row_bytes, "num_rows": TableGeometry.from_config(config).rows(self.layer_id)}
        for name, value in expected.items():
            if getattr(self, name) != value:
                raise ValueError(f"TableManifest.{name} is {getattr(self, name)} but its config implies {value}")

    @property
    def row_start(self) -> int:
        return shard_bounds(self.num_rows, self.shards)[self.shard]

    @property
    def row_stop(self) -> int:
        return shard_bounds(self.num_rows, self.shards)[self.shard + 1]

    @property
    def stored_rows(self) -> int:
        """Rows this store holds: all num_rows, or one shard's range (local row = row - row_start)."""
        return self.row_stop - self.row_start

    @property
    def num_chunks(self) -> int:
        return -(-self.stored_rows // self.chunk_rows)

    def engram_config(self) -> EngramConfig:
        return EngramConfig.from_dict(self.config)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "TableManifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"manifest is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError("manifest must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"manifest has unknown field(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as e:
            raise ValueError(f"manifest is incomplete: {e}") from None

    def check_compatible(self, config: EngramConfig, tokenizer_sha256: str | None = None,
                         compressed_vocab_size: int | None = None) -> None:
        """Raise ValueError naming the first field where the caller's config differs from the one
        these rows were made for."""
        ours = self.config
        theirs = config.to_dict()
        for name in ROW_ADDRESS_FIELDS:
            if name == "tokenizer" and tokenizer_sha256 is not None:
                continue  # the fingerprint below decides; paths may differ between hosts
            if ours.get(name) != theirs.get(name):
                fix = (f" (load the tables with `--dtype {theirs.get(name)}`, or run the worker with "
                       f"`--row-dtype {ours.get(name)}`)") if name == "row_dtype" else ""
                raise ValueError(f"table {self.table} v{self.version} was built with {name}="
                                 f"{ours.get(name)!r}, but this model's EngramConfig has {name}="
                                 f"{theirs.get(name)!r}: its rows would be wrong for this model{fix}")
        if tokenizer_sha256 is not None and tokenizer_sha256 != self.tokenizer_sha256:
            raise ValueError(f"table {self.table} v{self.version} was built for tokenizer sha256 "
                             f"{self.tokenizer_sha256[:16]}..., this model's tokenizer is "
                             f"{tokenizer_sha256[:16]}...")
        if compressed_vocab_size is not None and compressed_vocab_size != self.compressed_vocab_size:
            raise ValueError(f"table {self.table} v{self.version} expects {self.compressed_vocab_size} "
                             f"compressed ids; this tokenizer gives {compressed_vocab_size}")
        if self.layer_id not in config.layer_ids:
            raise ValueError(f"table {self.table} holds layer {self.layer_id}, which is not in this "
                             f"model's layer_ids {config.layer_ids}")
