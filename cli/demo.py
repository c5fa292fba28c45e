"""`engram-memory demo`: the main job, end to end on one machine with embedded defaults.

It tokenizes real text, hashes it into Engram row ids for every layer, measures how often rows
repeat, and reports the table geometry of the demo, paper and DeepSeek-V4.1 configurations; then
(e2e.py) it creates the demo tables once, starts the memory service and runs the demo model over
real text with local tables and with the service, and compares speed and outputs.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.comparison import ComparisonConfig
from core import checkpoint_format
from core.config import PRESETS, EngramConfig
from core.corpus import CHINESE, ENGLISH, PACKAGED_SAMPLE, corpora_dir, corpus_file, read_lines
from core.geometry import TableGeometry
from core.tokenizer import CompressedTokenizer
from model_client.hasher import NgramHasher


@dataclass
class DemoConfig:
    config: str = field(default="", metadata={
        "help": "EngramConfig preset (demo, paper-27b, paper-40b, deepseek-v4.1) or a JSON file (default: "
                "the --checkpoint's, else demo)"})
    corpus: list[str] = field(default_factory=list, metadata={
        "help": "text files to run on; default: en/brown.txt and zh/msra_news.txt from the shared "
                "corpora, or the packaged Alice in Wonderland when those are absent"})
    max_chars: int = field(default=400_000, metadata={
        "help": "characters read per corpus (400,000 chars of English are about 100,000 tokens)"})
    seq_len: int = field(default=1024, metadata={"help": "tokens per sequence when hashing"})
    e2e: bool = field(default=True, metadata={
        "help": "then run the demo model with local tables and with tables in the memory service"})

    def __post_init__(self):
        if self.max_chars < 1:
            raise ValueError(f"DemoConfig.max_chars must be >= 1 (got {self.max_chars})")
        if self.seq_len < 1:
            raise ValueError(f"DemoConfig.seq_len must be >= 1 (got {self.seq_len})")
        for path in self.corpus:
            if not Path(path).is_file():
                raise ValueError(f"DemoConfig.corpus: no such file {path!r}")


def default_corpora() -> list[Path]:
    found = [p for p in (corpus_file(ENGLISH), corpus_file(CHINESE)) if p is not None]
    return found or [PACKAGED_SAMPLE]


def hash_corpus(hasher: NgramHasher, ids: np.ndarray, seq_len: int) -> dict:
    """Hash a token stream as sequences of seq_len tokens (the tail as a shorter one);
    returns {layer_id: global row ids [tokens, num_columns]}."""
    full = len(ids) // seq_len * seq_len
    parts = [ids[:full].reshape(-1, seq_len)] if full else []
    if full < len(ids):
        parts.append(ids[full:][None])
    rows = {layer: [] for layer in hasher.config.layer_ids}
    for batch in parts:
        for layer, idx in hasher.hash(batch).items():
            rows[layer].append(hasher.row_ids(layer, idx).reshape(-1, idx.shape[-1]))
    return {layer: np.concatenate(r) for layer, r in rows.items()}


def run(demo: DemoConfig, worker=None) -> int:
    checkpoint = worker.checkpoint if worker is not None else ""
    config = checkpoint_format.config_for(demo.config, checkpoint)
    config_name = demo.config or (f"of {checkpoint}" if checkpoint else "demo")
    print("engram-memory demo: real text -> DeepSeek-V3 tokens -> compressed ids -> Engram row ids\n")
    t0 = time.perf_counter()
    tokenizer = CompressedTokenizer(config.tokenizer)
    build_s = time.perf_counter() - t0
    saved = 1 - tokenizer.num_compressed / tokenizer.vocab_size
    print(f"tokenizer {config.tokenizer}: {tokenizer.vocab_size:,} raw ids -> {tokenizer.num_compressed:,} "
          f"compressed ids ({saved:.3%} fewer); {'loaded from cache' if tokenizer.cache_hit else 'built'} "
          f"in {build_s:.2f} s")
    hasher = NgramHasher(config, tokenizer)
    stored = ""
    if demo.e2e and worker is not None and worker.row_dtype != config.row_dtype:
        as_stored = config.replace(row_dtype=worker.row_dtype)
        stored = f"; the end-to-end part stores them as {as_stored.row_dtype}, {as_stored.row_bytes} B (--row-dtype)"
    print(f"config {config_name}: Engram at layers {config.layer_ids}, {2}..{config.max_ngram_size}-grams, "
          f"{config.n_head_per_ngram} heads x {config.head_dim} values; the preset's rows are "
          f"{config.row_dtype}, {config.row_bytes} B{stored}\n")

    paths = [Path(p) for p in demo.corpus] or default_corpora()
    if paths == [PACKAGED_SAMPLE]:
        print(f"(no shared corpora found near {Path.cwd()}; using the packaged sample text)")
    header = f"{'corpus':<28}{'tokens':>10}{'tokenize tok/s':>16}{'hash tok/s':>13}"
    header += "".join(f"{f'L{layer} first-touch':>17}" for layer in config.layer_ids)
    print(header)
    base = corpora_dir()
    for path in paths:
        lines = read_lines(path, demo.max_chars)
        t0 = time.perf_counter()
        ids = np.fromiter((i for row in tokenizer.encode_batch(lines) for i in row), dtype=np.int64)
        tok_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = hash_corpus(hasher, ids, demo.seq_len)
        hash_s = time.perf_counter() - t0
        # share of row reads that touch a row for the first time: what no cache can serve
        first = [len(np.unique(r)) / r.size for r in rows.values()]
        name = str(path.relative_to(base)) if base and path.is_relative_to(base) else path.name
        line = f"{name:<28}{len(ids):>10,}{len(ids) / tok_s:>16,.0f}{len(ids) / hash_s:>13,.0f}"
        print(line + "".join(f"{share:>17.1%}" for share in first))

    print("first-touch: the share of a layer's row reads that touch a row for the first time in this text, "
          "which no cache can serve")
    print("\ntable geometry (rows per Engram layer = sum of its prime-sized sub-tables)")
    print(f"{'preset':<15}{'layers':<10}{'rows per layer':<28}{'dim':>5}{'dtype':>10}{'row B':>7}"
          f"{'B/token':>9}{'params':>9}{'total':>11}")
    for name in PRESETS:
        preset = EngramConfig.preset(name)
        geo = TableGeometry.from_config(preset)
        rows = " / ".join(f"{geo.rows(layer):,}" for layer in preset.layer_ids)
        print(f"{name:<15}{str(preset.layer_ids):<10}{rows:<28}{preset.head_dim:>5}{preset.row_dtype:>10}"
              f"{preset.row_bytes:>7}{geo.bytes_per_token:>9,}{geo.total_parameters / 1e9:>8.2f}B"
              f"{geo.total_bytes / 2**30:>7.1f} GiB")
    print("\nB/token: row bytes one token reads across all its Engram layers (columns x row bytes).")
    if demo.e2e:
        from bench.comparison import run_comparison
        from bench.comparison_report import report
        worker = dataclasses.replace(worker or ComparisonConfig(), config=demo.config)
        model = f"the model of {checkpoint}" if checkpoint else "the demo model"
        print(f"\nend to end: {model} with local tables vs tables in the memory service (--no-e2e skips)")
        out = run_comparison(worker)
        print("\n" + report(out))
        return 0 if out["outputs_match"] else 1
    return 0


@dataclass
class DemoCommand(ComparisonConfig, DemoConfig):
    """`engram-memory demo`'s flags: the hashing report's (DemoConfig) and the worker's (ComparisonConfig)."""

    def __post_init__(self):
        DemoConfig.__post_init__(self)
        ComparisonConfig.__post_init__(self)


def run_command(cmd: DemoCommand) -> int:
    demo = DemoConfig(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(DemoConfig)})
    worker = ComparisonConfig(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(ComparisonConfig)})
    return run(demo, worker)
