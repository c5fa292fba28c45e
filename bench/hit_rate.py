"""`engram-memory bench hit-rate`: cache hit rates on real text, against the optimum.

Each corpus is tokenized, cut into sequences of `seq_len` tokens, hashed with an EngramConfig, and
each Engram layer's row accesses (token by token, columns in order) replayed through:
  lru            fully associative least-recently-used, per access;
  rowcache-lru   the project's RowCache (16-way sets, one token per batch), LRU;
  rowcache-lfu   the same with LFU, counts halved every `lfu_decay_tokens` tokens;
  order3-aging   LRU where 3-gram rows age 4x faster than 2-gram rows;
  lookahead-W    fully associative LRU that keeps rows needed by the next W tokens (known once
                 their requests are admitted: a prefill batch of 64 x 1,024 tokens knows 65,536
                 tokens ahead);
  rowcache-lookahead-W  the project's RowCache with its lookahead policy, each token announced W
                 tokens before it is read (what the prefetcher does for admitted requests);
  two-tier       RowCache-LRU on the device plus a RowCache-LRU host tier 10x larger (the share of
                 accesses served by either; no share of Belady: it holds 11x the rows);
  belady         Belady's MIN, the clairvoyant optimum of each size;
  infinite       the ceiling of any size (every access but a row's first).
Sizes are fractions of the layer's table. One JSON row per (corpus, layer, policy, size) and one
PNG per corpus.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.corpus import CHINESE, ENGLISH, PACKAGED_SAMPLE, corpus_file, read_lines
from model_client import EngramConfig, NgramHasher

from .report import machine, write_rows

DEFAULT_SIZES = [0.01, 0.05]  # the issue-17 figures; the token mode was run at 0.1% ... 30%


@dataclass
class HitRateConfig:
    corpora: list[str] = field(default_factory=lambda: [ENGLISH, CHINESE], metadata={
        "help": "text files, or names inside the shared corpora (en/brown.txt, zh/msra_news.txt)"})
    tokens: int = field(default=1_000_000, metadata={"help": "tokens per corpus"})
    config: str = field(default="demo", metadata={"help": "EngramConfig preset or JSON file"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer.json to use (default: the config's)"})
    seq_len: int = field(default=1024, metadata={"help": "tokens per sequence (the hash restarts each one)"})
    sizes: list[float] = field(default_factory=lambda: list(DEFAULT_SIZES), metadata={
        "type": float, "help": "cache sizes as fractions of the table"})
    windows: list[int] = field(default_factory=lambda: [8192, 65536], metadata={
        "type": int, "help": "lookahead windows, tokens"})
    lfu_decay_tokens: int = field(default=131_072, metadata={
        "help": "rowcache-lfu halves its counts every this many tokens (measured on Brown 400k, layer 1, "
                "1% cache: 1,024 -> 0.184 (as LRU), 16,384 -> 0.199, 131,072 -> 0.217, never -> 0.207)"})
    modes: list[str] = field(default_factory=lambda: ["prefill", "decode"], metadata={
        "help": "prefill: admitted prompts prefilled in passes, announced at admission; decode: streams stepping "
                "together, nothing announced (both as serving runs them: bench/serving_replay.py); token: the "
                "idealized per-token replay (a sliding lookahead window, one tick per token)"})
    group: int = field(default=64, metadata={"help": "prefill: prompts per forward pass (the paper workload's 64)"})
    admit: int = field(default=512, metadata={"help": "prefill: prompts admitted (and announced) together"})
    streams: int = field(default=64, metadata={"help": "decode: sequences stepping together"})
    policies: list[str] = field(default_factory=lambda: ["lru", "lfu", "lookahead", "tinylfu"], metadata={
        "help": "RowCache policies of the prefill and decode modes"})
    processes: int = field(default=2, metadata={"help": "jobs run in parallel"})
    replot: str = field(default="", metadata={
        "help": "only draw the PNGs again from this JSON of an earlier run (beside it), measuring nothing"})
    out: str = field(default="bench-out/hit_rate.json", metadata={"help": "JSON output; PNGs beside it; bench-out/ is not tracked (the committed figures are in bench/results/)"})

    def __post_init__(self):
        if self.tokens < 1 or self.seq_len < 1 or self.processes < 1:
            raise ValueError("HitRateConfig.tokens, seq_len and processes must be >= 1")
        if not self.modes or not set(self.modes) <= {"prefill", "decode", "token"}:
            raise ValueError(f"--modes must be among prefill, decode, token (got {self.modes})")
        if min(self.group, self.admit, self.streams) < 1:
            raise ValueError("--group, --admit and --streams must be >= 1")
        if not self.sizes or not all(0 < s <= 1 for s in self.sizes):
            raise ValueError(f"HitRateConfig.sizes must be fractions in (0, 1] (got {self.sizes})")


def corpus_path(name: str) -> Path:
    path = Path(name) if Path(name).is_file() else corpus_file(name)
    if path is None:
        raise ValueError(f"corpus {name!r} not found (a file, or a name under the shared corpora: set ENGRAM_CORPORA)")
    return path


def make_hasher(cfg: HitRateConfig) -> NgramHasher:
    config = EngramConfig.load(cfg.config)
    return NgramHasher(config.replace(tokenizer=cfg.tokenizer) if cfg.tokenizer else config)


def corpus_sequences(cfg: HitRateConfig, name: str, hasher: NgramHasher) -> np.ndarray:
    """The corpus's first cfg.tokens tokens as sequences [N, seq_len] (or one row if shorter)."""
    ids, chars = np.empty(0, dtype=np.int64), 6 * cfg.tokens
    while len(ids) < cfg.tokens:
        lines = read_lines(corpus_path(name), chars)
        ids = np.fromiter((i for row in hasher.tokenizer.encode_batch(lines) for i in row), dtype=np.int64)
        if chars > 10 * 6 * cfg.tokens or sum(map(len, lines)) < chars:
            break  # the whole file is shorter than asked
        chars *= 2
    ids = ids[:cfg.tokens - cfg.tokens % cfg.seq_len] if len(ids) >= cfg.seq_len else ids
    return ids.reshape(-1, cfg.seq_len) if len(ids) % cfg.seq_len == 0 else ids[None]


def traces(cfg: HitRateConfig, name: str) -> tuple[dict, int, dict]:
    """{layer: int64 row ids in access order}, tokens used, {layer: table rows}."""
    hasher = make_hasher(cfg)
    config = hasher.config
    seqs = corpus_sequences(cfg, name, hasher)
    out = {}
    for start in range(0, len(seqs), 64):  # hash in slices of 64 sequences to bound memory
        for layer, idx in hasher.hash(seqs[start:start + 64]).items():
            out.setdefault(layer, []).append(hasher.row_ids(layer, idx).reshape(-1))
    return ({layer: np.concatenate(v) for layer, v in out.items()}, int(seqs.size),
            {layer: hasher.geometry.rows(layer) for layer in config.layer_ids})


def _job(args) -> list[dict]:
    from . import cache_sim
    from .rowcache_sim import replay
    cfg, name, layer = args
    t0 = time.perf_counter()
    all_traces, tokens, rows = traces(cfg, name)
    trace, table_rows = all_traces[layer], rows[layer]
    columns = len(trace) // tokens
    n = len(trace)
    bounds = np.arange(0, n + 1, columns)  # one token per RowCache batch
    order3 = np.tile((np.arange(columns) >= columns // 2).astype(np.int64), tokens)  # 2 orders x K heads
    base = {"corpus": Path(name).name, "tokens": tokens, "layer": layer, "table_rows": table_rows, "accesses": n}
    results = [{**base, "policy": "infinite", "cache_fraction": 1.0, "cache_rows": table_rows,
                "hit_rate": cache_sim.infinite_hits(trace) / n, "share_of_belady": None}]
    for frac in cfg.sizes:
        c = int(frac * table_rows)
        rates = {"lru": cache_sim.lru_hits(trace, c) / n, "belady": cache_sim.opt_hits(trace, c) / n,
                 "order3-aging": cache_sim.lookahead_hits(trace, c, 0, np.where(order3 == 1, 4, 1)) / n}
        for window in cfg.windows:
            rates[f"lookahead-{window}"] = cache_sim.lookahead_hits(trace, c, window * columns) / n
        for window in cfg.windows:
            hits, _, _ = replay(trace, bounds, c, policy="lookahead", window=window)
            rates[f"rowcache-lookahead-{window}"] = hits.mean()
        for policy in ("lru", "lfu"):
            hits, _, _ = replay(trace, bounds, c, policy=policy, decay_every=cfg.lfu_decay_tokens)
            rates[f"rowcache-{policy}"] = hits.mean()
            if policy == "lru":
                device_miss = ~hits
                sub = trace[device_miss]
                sub_bounds = np.concatenate([[0], np.cumsum(device_miss.reshape(-1, columns).sum(axis=1))])
                host_hits, _, _ = replay(sub, sub_bounds, min(10 * c, table_rows))
                rates["two-tier (host 10x)"] = (hits.sum() + host_hits.sum()) / n
        for policy, rate in rates.items():
            comparable = rates["belady"] and not policy.startswith("two-tier")  # that one holds 11x the rows
            results.append({**base, "policy": policy, "cache_fraction": frac, "cache_rows": c, "hit_rate": float(rate),
                            "share_of_belady": float(rate / rates["belady"]) if comparable else None})
    print(f"  {base['corpus']} layer {layer}: {len(cfg.sizes)} sizes in {time.perf_counter() - t0:.0f} s", flush=True)
    return results


def _serving_job(args) -> list[dict]:
    """One (corpus, mode, policy, size): the serving replay's counters and Belady on the same passes."""
    from . import cache_sim
    from .serving_replay import ServingReplay
    cfg, name, mode, policy, frac = args
    t0 = time.perf_counter()
    hasher = make_hasher(cfg)
    seqs = corpus_sequences(cfg, name, hasher)
    replay = ServingReplay(hasher, frac, policy)  # LFU decays as the worker's cache does (every 1,024 passes)
    if mode == "prefill":
        replay.prefill(seqs, cfg.group, cfg.admit)
    else:  # each stream reads on through the text: the corpus cut into `streams` contiguous parts
        flat = seqs.reshape(-1)
        replay.decode(flat[:len(flat) - len(flat) % cfg.streams].reshape(cfg.streams, -1))
    rows = []
    for layer in replay.layers:
        result, cache = replay.result(layer), replay.cache(layer)
        trace = np.concatenate(result.passes)
        belady = cache_sim.opt_hits(trace, cache.capacity_rows) / len(trace)
        rate = result.stats.hits / result.stats.lookups
        rows.append({"corpus": Path(name).name, "mode": mode, "tokens": int(seqs.size), "layer": layer,
                     "table_rows": hasher.geometry.rows(layer), "policy": f"rowcache-{policy}",
                     "cache_fraction": frac, "cache_rows": cache.capacity_rows, "passes": len(result.passes),
                     "accesses": int(len(trace)), "hit_rate": rate, "belady": belady,
                     "share_of_belady": rate / belady if belady else None})
    print(f"  {Path(name).name} {mode} {policy} {frac:g}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def default_corpora(cfg: HitRateConfig) -> HitRateConfig:
    """The shared corpora when they are here; else the packaged English sample, saying so."""
    if cfg.corpora != [ENGLISH, CHINESE] or all(corpus_file(c) for c in cfg.corpora):
        return cfg
    found = [c for c in cfg.corpora if corpus_file(c)] or [str(PACKAGED_SAMPLE)]
    print(f"hit-rate: the shared corpora ({ENGLISH}, {CHINESE}) are not beside this checkout or in "
          f"$ENGRAM_CORPORA; running on {', '.join(found)} instead", flush=True)
    return dataclasses.replace(cfg, corpora=found)


def run(cfg: HitRateConfig) -> int:
    if cfg.replot:
        from .hit_rate_plot import replot
        return replot(cfg.replot)
    import importlib
    plots = ("matplotlib",) if "token" in cfg.modes else ()  # only the token mode draws
    for module in ("numba", *plots):  # before the pool: a missing extra is one clear line
        importlib.import_module(module)
    cfg = default_corpora(cfg)
    config = EngramConfig.load(cfg.config)
    jobs = [(_serving_job, (cfg, name, mode, policy, frac)) for name in cfg.corpora for mode in cfg.modes
            if mode != "token" for policy in cfg.policies for frac in cfg.sizes]
    if "token" in cfg.modes:
        jobs += [(_job, (cfg, name, layer)) for name in cfg.corpora for layer in config.layer_ids]
    for name in cfg.corpora:
        corpus_path(name)  # fail before the long work
    print(f"hit-rate: {len(jobs)} jobs ({', '.join(cfg.modes)}) ...", flush=True)
    with mp.get_context("spawn").Pool(min(cfg.processes, len(jobs))) as pool:
        rows = [row for part in pool.map(_call, jobs) for row in part]
    info = machine()
    rows = [{"bench": "hit_rate", "mode": "token", **r, **info} for r in rows]
    out = write_rows(rows, cfg.out)
    if "token" in cfg.modes:
        from .hit_rate_plot import plot
        for name in cfg.corpora:
            mine = [r for r in rows if r["corpus"] == Path(name).name and r["mode"] == "token"]
            png = out.with_name(f"hit_rate_{Path(name).stem}.png")
            plot(mine, png)
            print(f"wrote {png}")
    print_summary(rows)
    print(f"wrote {out}")
    return 0


def _call(job):
    fn, args = job
    return fn(args)


def print_summary(rows: list[dict]) -> None:
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            for layer in sorted({r["layer"] for r in rows if r["corpus"] == corpus and r["mode"] == mode}):
                mine = [r for r in rows if r["corpus"] == corpus and r["layer"] == layer and r["mode"] == mode
                        and r["policy"] != "infinite"]
                sizes = sorted({r["cache_fraction"] for r in mine})
                print(f"\n{corpus} {mode} layer {layer}: hit rate (share of Belady)")
                print(f"{'policy':<22}" + "".join(f"{f'{100 * s:g}%':>16}" for s in sizes))
                for policy in dict.fromkeys(r["policy"] for r in mine):
                    cells = []
                    for s in sizes:
                        r = next(x for x in mine if x["policy"] == policy and x["cache_fraction"] == s)
                        share = f"{r['share_of_belady']:.0%}" if r["share_of_belady"] is not None else "-"
                        cells.append(f"{r['hit_rate']:.3f} ({share})")
                    print(f"{policy:<22}" + "".join(f"{c:>16}" for c in cells))
                if mode != "token":  # the optimum on the same passes
                    print(f"{'belady':<22}" + "".join(f"{next(x['belady'] for x in mine if x['cache_fraction'] == s):>16.3f}"
                                                    for s in sizes))
