"""`engram-memory bench scale`: the memory service as its table outgrows RAM.

For tables of 1, 4, 16 and 32 GiB of rows (one Engram layer, bf16 x 64 = 128 B rows) the service
starts with the table's pages evicted from the page cache, and client processes replay a real-text
trace (Brown, hashed into that table) through a device RowCache of 1% of the table, sending each
decode-sized step's misses to the service. Reported per size: the service's rows/s and p50/p99
latency over the run and over its last third (once the page cache has warmed what fits), the device
cache hit rate, and what the server processes read from disk (/proc/<pid>/io read_bytes) and their
major page faults, i.e. page-cache misses.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .report import machine, process_tree, write_rows


@dataclass
class ScaleBenchConfig:
    sizes_gb: list[float] = field(default_factory=lambda: [1, 4, 16, 32], metadata={
        "type": float, "help": "table sizes, GiB of rows on disk"})
    db_dir: str = field(default="", metadata={"help": "where the stores go (default: a temporary directory)"})
    keep: bool = field(default=False, metadata={"help": "keep the stores after the run"})
    duration_s: float = field(default=30.0, metadata={"help": "seconds of lookups per size"})
    clients: int = field(default=2, metadata={"help": "client processes"})
    server_workers: int = field(default=4, metadata={"help": "server processes"})
    step_tokens: int = field(default=64, metadata={"help": "tokens per step (a decode step of 64 sequences)"})
    replot: list[str] = field(default_factory=list, metadata={
        "help": "only draw one PNG (--out with .png) from these JSON results of earlier runs, measuring nothing"})
    out: str = field(default="bench-out/scale.json", metadata={"help": "JSON output; a PNG beside it; bench-out/ is not tracked (the committed figures are in bench/results/)"})

    def __post_init__(self):
        if not self.sizes_gb or min(self.sizes_gb) <= 0:
            raise ValueError("ScaleBenchConfig.sizes_gb must be positive")
        if self.clients < 1 or self.duration_s <= 0:
            raise ValueError("ScaleBenchConfig.clients must be >= 1 and duration_s > 0")


def config_for(gib: float):
    from model_client import EngramConfig
    rows = int(gib * 2**30) // 128
    vocab = rows // 16  # 2 orders x 8 heads of primes just above it
    return EngramConfig(engram_vocab_size=[vocab, vocab], layer_ids=[1], row_dtype="bfloat16")


def _proc_io(pids) -> tuple[int, int]:
    """(bytes read from storage, major faults) summed over processes."""
    read, faults = 0, 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/io"):
                if line.startswith("read_bytes:"):
                    read += int(line.split()[1])
            faults += int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[9])
        except OSError:
            pass
    return read, faults


def _client(target, config_json, trace, step_rows, duration_s, start_at, results):
    import torch

    from model_client import EngramConfig, MemoryClient, MemoryServiceError, TableGeometry
    from model_client.row_cache import RowCache
    config = EngramConfig.from_dict(config_json)
    table_rows = TableGeometry.from_config(config).rows(1)
    cache = RowCache(table_rows // 100 * config.row_bytes, config.row_bytes)  # 1% of the table
    latencies, times, rows, hits, lookups, errors = [], [], 0, 0, 0, []
    with MemoryClient(target, channels=2) as client:
        client.describe("layer1")
        while time.time() < start_at:
            time.sleep(0.001)
        t_start, i = time.perf_counter(), 0
        while time.perf_counter() - t_start < duration_s:
            ids = torch.unique(torch.from_numpy(trace[i:i + step_rows]))
            i = (i + step_rows) % (len(trace) - step_rows)
            hit, _ = cache.lookup(ids)
            miss = ids[~hit]
            t0 = time.perf_counter()
            try:
                got = client.lookup("layer1", miss.numpy())
            except MemoryServiceError as e:  # counted and reported, never a hang of the benchmark
                errors.append(str(e))
                continue
            latencies.append(time.perf_counter() - t0)
            times.append(t0 - t_start)
            cache.insert(miss, torch.from_numpy(got))
            rows += len(miss)
            hits += int(hit.sum())
            lookups += len(ids)
        results.put((rows, time.perf_counter() - t_start, latencies, times, hits, lookups, errors))


def replot(paths: list[str], out: str) -> int:
    import json
    series = {}
    for path in paths:
        rows = json.loads(Path(path).read_text())
        note = ", huge pages" if any(r.get("huge_pages") for r in rows) or "hugepages" in path else ", 4 KiB pages"
        series[f"{Path(path).name} ({rows[0]['date']}{note})"] = sorted(rows, key=lambda r: r["table_gib"])
    png = Path(out).with_suffix(".png")
    plot(series, png)
    print(f"wrote {png}")
    return 0


def run(cfg: ScaleBenchConfig) -> int:
    if cfg.replot:
        return replot(cfg.replot, cfg.out)
    from core.corpus import ENGLISH, PACKAGED_SAMPLE, corpus_file, read_lines
    from core.store import TableStore
    from core.tokenizer import get_compressed_tokenizer
    from memory_service.checkpoint import RandomRows
    from memory_service.loader import load_layer
    from memory_service.process import ServiceProcess
    from model_client import NgramHasher

    base = Path(cfg.db_dir or tempfile.mkdtemp(prefix="engram-scale-"))
    tokenizer = get_compressed_tokenizer("deepseek-v3")
    lines = read_lines(corpus_file(ENGLISH) or PACKAGED_SAMPLE, 3_000_000)
    tokens = np.array([i for row in tokenizer.encode_batch(lines) for i in row], dtype=np.int64)[:500_000]
    info, rows_out = machine(), []
    try:
        for gib in cfg.sizes_gb:
            config = config_for(gib)
            db = base / f"table-{gib:g}GiB"
            store = TableStore(db, bulk=True)
            try:
                if not store.current_version("layer1"):
                    print(f"loading a {gib:g} GiB table ...", flush=True)
                    load_layer(store, config, 1, RandomRows(0, 1, config.head_dim), tokenizer.sha256,
                               tokenizer.num_compressed)
                manifest = store.manifest("layer1")
            finally:
                store.close()
            with open(db / "data.mdb", "rb+") as f:  # start cold: the table's pages out of the page cache
                os.fsync(f.fileno())  # dirty pages are not dropped, and their writeback would stall reads
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            hasher = NgramHasher(config, tokenizer)
            seqs = tokens[:len(tokens) // 1024 * 1024].reshape(-1, 1024)
            trace = hasher.row_ids(1, hasher.hash(seqs)[1]).reshape(-1)
            server = ServiceProcess(db, workers=cfg.server_workers)
            try:
                server.wait_serving()
                pids = process_tree(server.proc.pid)
                io0 = _proc_io(pids)
                ctx = mp.get_context("spawn")
                results = ctx.Queue()
                start_at = time.time() + 3
                parts = np.array_split(trace, cfg.clients)
                procs = [ctx.Process(target=_client, args=(server.target, config.to_dict(), part,
                                                           cfg.step_tokens * config.num_columns, cfg.duration_s,
                                                           start_at, results)) for part in parts]
                for p in procs:
                    p.start()
                answers = [results.get(timeout=cfg.duration_s + 300) for _ in procs]
                for p in procs:
                    p.join()
                io1 = _proc_io(pids)
            finally:
                server.stop()
            served = sum(a[0] for a in answers)
            wall = max(a[1] for a in answers)
            lat = sorted(x for a in answers for x in a[2])
            late = sorted(x for a in answers for x, t in zip(a[2], a[3]) if t > 2 * cfg.duration_s / 3)
            late_rows = sum(1 for a in answers for t in a[3] if t > 2 * cfg.duration_s / 3)
            row = {"bench": "scale", "table_gib": gib, "table_rows": manifest.num_rows, "row_bytes": 128,
                   "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                   "device_cache_rows": manifest.num_rows // 100, "clients": cfg.clients,
                   "server_workers": cfg.server_workers, "rows_served": served,
                   "service_rows_per_s": served / wall,
                   "p50_ms": 1e3 * statistics.median(lat), "p99_ms": 1e3 * lat[int(0.99 * (len(lat) - 1))],
                   "late_p50_ms": 1e3 * statistics.median(late) if late else None,
                   "late_requests_per_s": late_rows / (cfg.duration_s / 3),
                   "device_hit_rate": sum(a[4] for a in answers) / max(1, sum(a[5] for a in answers)),
                   "disk_read_bytes": io1[0] - io0[0], "major_faults": io1[1] - io0[1],
                   "page_cache_hit_rate": 1 - (io1[1] - io0[1]) / max(1, served),
                   "failed_requests": sum(len(a[6]) for a in answers), **info}
            rows_out.append(row)
            print(f"{gib:>5g} GiB: {row['service_rows_per_s']:>10,.0f} rows/s, p50 {row['p50_ms']:.2f} ms, "
                  f"p99 {row['p99_ms']:.2f} ms, disk read {row['disk_read_bytes'] / 2**20:,.0f} MiB, "
                  f"page-cache hits {row['page_cache_hit_rate']:.1%}, failed requests {row['failed_requests']}",
                  flush=True)
            for a in answers:
                for error in a[6][:3]:
                    print(f"      {error}", flush=True)
            if not cfg.keep:
                shutil.rmtree(db, ignore_errors=True)
    finally:
        if not cfg.keep and not cfg.db_dir:
            shutil.rmtree(base, ignore_errors=True)
    out = write_rows(rows_out, cfg.out)
    plot({"this run": rows_out}, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def plot(series: dict[str, list[dict]], path: Path) -> None:
    """series: {label: rows of one run}; every run on the same axes, the setup in the title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    first = next(iter(series.values()))[0]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, (label, rows) in enumerate(series.items()):
        sizes = [r["table_gib"] for r in rows]
        color = f"C{i}"
        a.plot(sizes, [r["service_rows_per_s"] for r in rows], "o-", color=color, label=label)
        b.plot(sizes, [r["p50_ms"] for r in rows], "o-", color=color, label=f"p50, {label}")
        b.plot(sizes, [r["p99_ms"] for r in rows], "s:", color=color, label=f"p99, {label}")
    from matplotlib.ticker import FuncFormatter
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.axvline(first["ram_gib"], color="gray", ls=":", label=f"RAM ({first['ram_gib']:.0f} GiB)" if ax is a else None)
        ax.set_xlabel("table size, GiB (log scale)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    a.set_ylabel("service rows/s (device-cache misses)")
    b.set_ylabel("time per step's lookup, ms")
    fig.suptitle(f"engram-memory bench scale: tables of growing size from a cold page cache; {first['row_bytes']} B "
                 f"rows, {first['clients']} clients x steps of 64 tokens, {first['server_workers']} server processes, "
                 f"1% device cache; {first['machine']}, {first['date']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
