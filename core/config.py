"""EngramConfig: the geometry of an Engram model's hashed N-gram memory.

Field names follow the reference (deepseek-ai/Engram, engram_demo_v1.py), plus the two backbone
fields the module needs (`hidden_size`, `hc_mult`) and the storage dtype of table rows (`row_dtype`).
A table is only valid for the exact config it was trained with, so every field is validated here and
the whole config travels in each table's manifest.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

# Storage dtypes of table rows and their bytes per value. fp8-e4m3 rows carry one ue8m0 scale byte
# (a power of two, exponent bias 127) per block of 32 values, as in DeepSeek-V3's fp8 recipe.
ROW_DTYPES = ("float32", "bfloat16", "float16", "fp8-e4m3")
FP8_BLOCK = 32

DEEPSEEK_V3_VOCAB = 129280  # the backbone's embedding rows (the reference demo sizes tables from it)


@dataclass
class EngramConfig:
    tokenizer: str = "deepseek-v3"  # path to a tokenizer.json, or "deepseek-v3"
    # rows per sub-table before rounding up to a prime, one entry per n-gram order 2..max_ngram_size;
    # the reference demo uses 5 x the backbone vocabulary.
    engram_vocab_size: list[int] = field(default_factory=lambda: [DEEPSEEK_V3_VOCAB * 5] * 2)
    max_ngram_size: int = 3
    n_embed_per_ngram: int = 512  # split over the heads: head_dim = 512 / 8 = 64
    n_head_per_ngram: int = 8
    layer_ids: list[int] = field(default_factory=lambda: [1, 15])  # backbone block indices, 0-based
    pad_id: int = 2  # a raw tokenizer id; compressed before use, like the reference
    seed: int = 0
    kernel_size: int = 4
    hidden_size: int = 1024
    hc_mult: int = 4  # hyper-connection branches; 1 for a plain residual stream
    row_dtype: str = "float32"

    def __post_init__(self):
        def fail(name: str, why: str):
            raise ValueError(f"EngramConfig.{name}: {why} (got {getattr(self, name)!r})")

        def positive_int(name: str, minimum: int = 1):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                fail(name, f"must be an integer >= {minimum}")

        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            fail("tokenizer", 'must be a path to a tokenizer.json or "deepseek-v3"')
        positive_int("max_ngram_size", 2)
        positive_int("n_embed_per_ngram")
        positive_int("n_head_per_ngram")
        positive_int("kernel_size")
        positive_int("hidden_size")
        positive_int("hc_mult")
        positive_int("pad_id", 0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            fail("seed", "must be an integer >= 0")
        self.engram_vocab_size = list(self.engram_vocab_size)
        self.layer_ids = list(self.layer_ids)
        if len(self.engram_vocab_size) != self.max_ngram_size - 1:
            fail("engram_vocab_size",
                 f"needs one size per n-gram order 2..{self.max_ngram_size}, "
                 f"i.e. {self.max_ngram_size - 1} entries")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 2 for v in self.engram_vocab_size):
            fail("engram_vocab_size", "every entry must be an integer >= 2")
        if max(self.engram_vocab_size) >= 2**62:
            fail("engram_vocab_size", "entries must stay below 2**62 (int64 row ids)")
        if self.n_embed_per_ngram % self.n_head_per_ngram:
            fail("n_embed_per_ngram", f"must be divisible by n_head_per_ngram={self.n_head_per_ngram}")
        if not self.layer_ids:
            fail("layer_ids", "must name at least one backbone layer")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in self.layer_ids):
            fail("layer_ids", "every entry must be an integer >= 0")
        if len(set(self.layer_ids)) != len(self.layer_ids):
            fail("layer_ids", "must not repeat a layer")
        if self.row_dtype not in ROW_DTYPES:
            fail("row_dtype", f"must be one of {', '.join(ROW_DTYPES)}")

    # ---- derived geometry -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.n_embed_per_ngram // self.n_head_per_ngram

    @property
    def num_columns(self) -> int:
        """Sub-tables (hash heads) per layer: (max_ngram_size - 1) orders x n_head_per_ngram."""
        return (self.max_ngram_size - 1) * self.n_head_per_ngram

    @property
    def engram_hidden_size(self) -> int:
        """Width of one token's concatenated embeddings: num_columns * head_dim."""
        return (self.max_ngram_size - 1) * self.n_embed_per_ngram

    @property
    def row_bytes(self) -> int:
        """Stored bytes of one row of head_dim values in row_dtype."""
        d = self.head_dim
        if self.row_dtype == "float32":
            return 4 * d
        if self.row_dtype == "fp8-e4m3":
            return d + -(-d // FP8_BLOCK)  # one byte per value + one scale byte per started block
        return 2 * d

    # ---- (de)serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "EngramConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"EngramConfig: unknown field(s) {', '.join(unknown)}; "
                             f"known fields are {', '.join(sorted(known))}")
        return cls(**data)

    def replace(self, **changes) -> "EngramConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str) -> "EngramConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown EngramConfig preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls(**PRESETS[name])

    @classmethod
    def load(cls, preset_or_path: str) -> "EngramConfig":
        """A preset name (demo, paper-27b, paper-40b, deepseek-v4.1) or a JSON file of the fields."""
        if preset_or_path in PRESETS:
            return cls.preset(preset_or_path)
        if not os.path.isfile(preset_or_path):
            raise ValueError(f"config {preset_or_path!r} is neither a preset "
                             f"({', '.join(PRESETS)}) nor an existing JSON file")
        with open(preset_or_path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"config file {preset_or_path}: invalid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {preset_or_path}: expected a JSON object of EngramConfig fields")
        return cls.from_dict(data)


# Presets. paper-27b / paper-40b: the paper's Engram-27B and Engram-40B (30 blocks, hidden 2560,
# mHC with 4 branches, Engram at blocks 2 and 15, 2- and 3-grams, 8 heads of 640 / 8 = 80 values).
# Table parameters: 2 layers x 2 orders x 8 heads x ~2,262,400 rows x 80 = 5.8e9 (27B) and
# x ~7,239,680 rows = 18.5e9 (40B), the paper's 5.8B and 18.5B.
# deepseek-v4.1: 2- to 4-grams, 8 heads of 256 values, 16,000,000 rows per order, blocks 1 and 14,
# fp8 rows: 2 x 384e6 rows x (256 + 8) B = 189 GiB of tables. Its backbone width is not part of the
# published table facts; hidden_size 7168 (DeepSeek-V3's) and hc_mult 4 are placeholders for the module.
PRESETS: dict[str, dict] = {
    "demo": {},
    "paper-27b": dict(engram_vocab_size=[2_262_400] * 2, n_embed_per_ngram=640, layer_ids=[2, 15],
                      hidden_size=2560),
    "paper-40b": dict(engram_vocab_size=[7_239_680] * 2, n_embed_per_ngram=640, layer_ids=[2, 15],
                      hidden_size=2560),
    "deepseek-v4.1": dict(max_ngram_size=4, engram_vocab_size=[16_000_000] * 3, n_head_per_ngram=8,
                          n_embed_per_ngram=8 * 256, layer_ids=[1, 14], hidden_size=7168,
                          row_dtype="fp8-e4m3"),
}
