"""`engram-memory bench scale`: the memory service on a table larger than RAM, from a cold page cache.

For each table size (default 1.5x this machine's RAM; one Engram layer of bf16 x 64 = 128 B rows,
a seeded init), each server read path (--read-modes: the gather's page faults, POSIX_FADV_WILLNEED
read-ahead, a thread pool of preads; core/page_reader.py) and each request size (--request-rows:
8,192 ids, a decode step of 512 sequences x 16 columns, and 65,536, a 4,096-token prefill), the
service restarts with the table's pages dropped from the page cache and runs two phases:

- cold (cold_rows.py): every requested row on a page no earlier request touched, so each row is
  one disk read; rows/s as a ratio of fio's 4 KiB random-read IOPS on the same file at the queue
  depth the phase kept (/proc/diskstats), p50/p99 per request.
- trace: client processes replay Brown text hashed into the table through a device RowCache of 1%
  of the table, sending each step's misses: rows/s, p50/p99, the device-cache hit rate, and the
  page-cache hit rate (1 - disk reads / rows served).

Every row received in either phase is compared byte for byte with the loaded value at the end.
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

from . import cold_rows
from .report import machine, machine_busy, process_counters, process_tree, write_rows

RAM_GIB = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


@dataclass
class ScaleBenchConfig:
    sizes_gb: list[float] = field(default_factory=lambda: [float(np.ceil(1.5 * RAM_GIB))], metadata={
        "type": float, "help": "table sizes, GiB of rows on disk (default: 1.5x this machine's RAM, rounded up)"})
    request_rows: list[int] = field(default_factory=lambda: [8192, 65536], metadata={
        "type": int, "help": "row ids per request: 8,192 = a decode step of 512 sequences x 16 columns, "
                             "65,536 = a 4,096-token prefill"})
    read_modes: list[str] = field(default_factory=lambda: list(cold_rows.READ_MODES), metadata={
        "help": f"server read paths to run: {', '.join(cold_rows.READ_MODES)}"})
    phases: list[str] = field(default_factory=lambda: ["cold", "trace"], metadata={
        "help": "cold (every row a disk read, against fio) and/or trace (real text through a device cache)"})
    fio_depths: list[int] = field(default_factory=lambda: [1, 4, 16, 64, 256], metadata={
        "type": int, "help": "fio's iodepths for the plot's curve (each cold phase is compared with fio runs "
                             "of its own, right after it); none (--fio-depths alone): no fio, no comparison"})
    fio_s: float = field(default=15.0, metadata={"help": "seconds of each fio run"})
    db_dir: str = field(default="", metadata={"help": "where the stores go (default: a temporary directory)"})
    keep: bool = field(default=False, metadata={"help": "keep the stores after the run (a rerun reuses them)"})
    duration_s: float = field(default=20.0, metadata={"help": "seconds of lookups per phase"})
    clients: int = field(default=4, metadata={"help": "client processes (one request in flight each)"})
    server_workers: int = field(default=4, metadata={"help": "server processes"})
    replot: list[str] = field(default_factory=list, metadata={
        "help": "only draw one PNG (--out with .png) from these JSON results of earlier runs, measuring nothing: cold-row "
                "runs all on one figure, or the older table-size sweeps (bench/results/scale*.json) one series each"})
    out: str = field(default="bench-out/scale.json", metadata={"help": "JSON output; a PNG beside it; bench-out/ is not tracked (the committed figures are in bench/results/)"})

    def __post_init__(self):
        if not self.sizes_gb or min(self.sizes_gb) <= 0:
            raise ValueError("--sizes-gb must be positive")
        if self.clients < 1 or self.duration_s <= 0:
            raise ValueError("--clients must be >= 1 and --duration-s > 0")
        if not self.request_rows or min(self.request_rows) < 1:
            raise ValueError("--request-rows must be >= 1")
        bad = [m for m in self.read_modes if m not in cold_rows.READ_MODES]
        if bad or not self.read_modes:
            raise ValueError(f"--read-modes: {bad or 'none'}; choose from {', '.join(cold_rows.READ_MODES)}")
        if not set(self.phases) <= {"cold", "trace"} or not self.phases:
            raise ValueError(f"--phases {self.phases}: choose cold and/or trace")


def config_for(gib: float):
    from model_client import EngramConfig
    rows = int(gib * 2**30) // 128
    vocab = rows // 16  # 2 orders x 8 heads of primes just above it
    return EngramConfig(engram_vocab_size=[vocab, vocab], layer_ids=[1], row_dtype="bfloat16")


def _trace_client(target, config_json, trace, step_rows, duration_s, start_at, results):
    import torch

    from model_client import EngramConfig, MemoryClient, MemoryServiceError, TableGeometry
    from model_client.row_cache import RowCache
    config = EngramConfig.from_dict(config_json)
    table_rows = TableGeometry.from_config(config).rows(1)
    cache = RowCache(table_rows // 100 * config.row_bytes, config.row_bytes)  # 1% of the table
    latencies, hits, lookups, errors, got_ids, got_rows, i = [], 0, 0, [], [], [], 0
    with MemoryClient(target, channels=1) as client:
        client.describe("layer1")
        while time.time() < start_at.value or start_at.value == 0:
            time.sleep(0.001)
        t_start = time.perf_counter()
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
            cache.insert(miss, torch.from_numpy(got))
            got_ids.append(miss.numpy())
            got_rows.append(got)
            hits += int(hit.sum())
            lookups += len(ids)
        wall = time.perf_counter() - t_start
    ids = np.concatenate(got_ids) if got_ids else np.zeros(0, np.int64)
    rows = np.concatenate(got_rows) if got_rows else np.zeros((0, config.row_bytes), np.uint8)
    results.put((wall, latencies, ids, rows, errors, False, hits, lookups))


def _phase(kind, gib, db, config, mode, request_rows, cfg, device, trace) -> tuple[dict, np.ndarray, np.ndarray]:
    """One phase on a freshly started server from a cold page cache: its result row, ids and rows."""
    from memory_service.process import ServiceProcess
    from model_client import MemoryClient
    cold_rows.drop_cache(db / "data.mdb")
    server = ServiceProcess(db, *cold_rows.READ_MODES[mode], workers=cfg.server_workers)
    try:
        server.wait_serving()
        with MemoryClient(server.target) as probe:  # opens the table: read paths warm its checksums
            table_rows = probe.describe("layer1").num_rows
            probe.lookup("layer1", np.arange(cfg.server_workers * 8, dtype=np.int64) * 4099)
        warm_s = cold_rows.wait_quiet(device)
        ctx = mp.get_context("spawn")
        results, start_at = ctx.Queue(), ctx.Value("d", 0.0)
        if kind == "cold":
            per_client = int(cfg.duration_s * 400_000 / cfg.clients)  # more than a disk serves in the time
            parts = cold_rows.cold_ids(table_rows, cfg.clients, per_client, seed=request_rows)
            procs = [ctx.Process(target=cold_rows.cold_client, args=(server.target, part, request_rows,
                                                                     cfg.duration_s, start_at, results))
                     for part in parts]
        else:
            procs = [ctx.Process(target=_trace_client, args=(server.target, config.to_dict(), part, request_rows,
                                                             cfg.duration_s, start_at, results))
                     for part in np.array_split(trace, cfg.clients)]
        for p in procs:
            p.start()
        time.sleep(3)  # the clients connect and describe the table
        pids = process_tree(server.proc.pid)
        (faults0, cpu0), busy0, disk0 = process_counters(pids), machine_busy(), cold_rows.DiskCounters.sample(device)
        start_at.value = time.time()
        answers = [results.get(timeout=cfg.duration_s + 300) for _ in procs]
        disk = cold_rows.DiskCounters.sample(device).since(disk0)
        (faults, cpu), busy = process_counters(pids), machine_busy()
        faults, cpu, busy = faults - faults0, cpu - cpu0, (busy[0] - busy0[0]) / max(1, busy[1] - busy0[1])
        for p in procs:
            p.join()
    finally:
        server.stop()
    wall = max(a[0] for a in answers)
    lat = sorted(x for a in answers for x in a[1])
    ids = np.concatenate([a[2] for a in answers])
    rows = np.concatenate([a[3] for a in answers])
    row = {"bench": f"scale-{kind}", "table_gib": gib, "table_rows": table_rows, "row_bytes": 128,
           "ram_gib": round(RAM_GIB, 1), "read_mode": mode, "read_flags": " ".join(cold_rows.READ_MODES[mode]),
           "request_rows": request_rows, "clients": cfg.clients, "server_workers": cfg.server_workers,
           "requests": len(lat), "rows_served": len(ids), "rows_per_s": len(ids) / wall,
           "p50_ms": 1e3 * statistics.median(lat) if lat else None,
           "p99_ms": 1e3 * lat[int(0.99 * (len(lat) - 1))] if lat else None,
           "warm_up_s": warm_s, **disk, "disk_reads_per_row": disk["disk_reads"] / max(1, len(ids)),
           "major_faults": faults, "server_cpu_us_per_row": 1e6 * cpu / max(1, len(ids)),
           "machine_cpu_busy": busy, "failed_requests": sum(len(a[4]) for a in answers),
           "ran_out_of_ids": any(a[5] for a in answers)}
    if kind == "trace":
        row["device_hit_rate"] = sum(a[6] for a in answers) / max(1, sum(a[7] for a in answers))
        row["page_cache_hit_rate"] = max(0.0, 1 - disk["disk_reads"] / max(1, len(ids)))
    for a in answers:
        for error in a[4][:3]:
            print(f"      {error}", flush=True)
    return row, ids, rows


def _against_fio(row: dict, db: Path, device, cfg: ScaleBenchConfig) -> None:
    """fio on the same file right after the phase (the disk's speed drifts over minutes), at the
    queue depth the phase kept: fio's own submission gaps keep its depth at the disk below its
    iodepth, so it runs at that iodepth and at 512 (the block layer's nr_requests caps what
    arrives), and its IOPS is read off those two at the phase's depth as measured at the disk."""
    runs = [cold_rows.fio(db / "data.mdb", d, cfg.fio_s, device) for d in (max(1, round(row["queue_depth"])), 512)]
    curve = sorted((f["fio_queue_depth"], f["fio_iops"]) for f in runs)
    row["fio_iops"] = float(np.interp(row["queue_depth"], *zip(*curve)))
    row["fio_ratio"] = row["rows_per_s"] / row["fio_iops"]
    row["fio_runs"] = [{k: f[k] for k in ("iodepth", "fio_iops", "fio_queue_depth", "fio_p50_ms", "fio_p99_ms")}
                       for f in runs]
    print(f"      fio at the same queue depth ({row['queue_depth']:.0f}): {row['fio_iops']:,.0f} IOPS "
          f"(iodepth {runs[0]['iodepth']}: {runs[0]['fio_iops']:,.0f} at depth {runs[0]['fio_queue_depth']:.0f}; "
          f"512: {runs[1]['fio_iops']:,.0f} at {runs[1]['fio_queue_depth']:.0f}); the service's cold rows/s "
          f"are {row['fio_ratio']:.0%} of it", flush=True)


def _table(base: Path, gib: float, tokenizer):
    """The store of a gib-sized table under base, loaded (seeded init 0) unless it already is."""
    from core.store import TableStore
    from memory_service.checkpoint import RandomRows
    from memory_service.loader import load_layer
    config, db = config_for(gib), base / f"table-{gib:g}GiB"
    db.mkdir(parents=True, exist_ok=True)
    store = TableStore(db, bulk=True)
    try:
        if not store.current_version("layer1"):
            free = shutil.disk_usage(db).free
            if free < gib * 2**30 * 1.1:
                raise SystemExit(f"bench scale: a {gib:g} GiB table needs {gib * 1.1:.0f} GiB free in {db}; "
                                 f"{free / 2**30:.0f} GiB are (--db-dir elsewhere, or smaller --sizes-gb)")
            print(f"loading a {gib:g} GiB table into {db} ...", flush=True)
            load_layer(store, config, 1, RandomRows(0, 1, config.head_dim), tokenizer.sha256,
                       tokenizer.num_compressed)
    finally:
        store.close()
    return config, db


def run(cfg: ScaleBenchConfig) -> int:
    from . import scale_plot
    if cfg.replot:
        return scale_plot.replot(cfg.replot, cfg.out)
    from core.corpus import ENGLISH, PACKAGED_SAMPLE, corpus_file, read_lines
    from core.tokenizer import get_compressed_tokenizer
    from model_client import NgramHasher

    base = Path(cfg.db_dir or tempfile.mkdtemp(prefix="engram-scale-"))
    tokenizer = get_compressed_tokenizer("deepseek-v3")
    lines = read_lines(corpus_file(ENGLISH) or PACKAGED_SAMPLE, 3_000_000)
    tokens = np.array([i for row in tokenizer.encode_batch(lines) for i in row], dtype=np.int64)[:500_000]
    info, rows_out = machine(), []
    out = Path(cfg.out)
    try:
        for gib in cfg.sizes_gb:
            config, db = _table(base, gib, tokenizer)
            device = cold_rows.device_of(db / "data.mdb")
            hasher = NgramHasher(config, tokenizer)
            trace = hasher.row_ids(1, hasher.hash(tokens[:len(tokens) // 1024 * 1024].reshape(-1, 1024))[1]).reshape(-1)
            got_ids, got_rows, size_rows = [], [], []
            for kind in cfg.phases:
                for mode in cfg.read_modes:
                    for request_rows in cfg.request_rows:
                        row, ids, rows = _phase(kind, gib, db, config, mode, request_rows, cfg, device, trace)
                        row.update(info)
                        got_ids.append(ids)
                        got_rows.append(rows)
                        if not row["requests"]:
                            print(f"{gib:>5g} GiB {kind} {mode} {request_rows:,}-row requests: none ran (a "
                                  f"table of {row['table_rows']:,} rows has too few pages)", flush=True)
                            continue
                        size_rows.append(row)
                        print(f"{gib:>5g} GiB {kind:>5} {mode:>7} {request_rows:>6,}-row requests: "
                              f"{row['rows_per_s']:>9,.0f} rows/s, p50 {row['p50_ms']:.1f} ms, p99 "
                              f"{row['p99_ms']:.1f} ms, {row['disk_reads_per_s']:,.0f} disk reads/s at queue "
                              f"depth {row['queue_depth']:.1f}" + (
                                  f", device hits {row['device_hit_rate']:.1%}, page-cache hits "
                                  f"{row['page_cache_hit_rate']:.1%}" if kind == "trace" else "") +
                              f", failed requests {row['failed_requests']}", flush=True)
                        if kind == "cold" and cfg.fio_depths:  # --fio-depths with none: no fio at all
                            _against_fio(row, db, device, cfg)
            fio = {}
            for depth in cfg.fio_depths:  # the disk's curve, for the plot
                fio[depth] = cold_rows.fio(db / "data.mdb", depth, cfg.fio_s, device)
                fio[depth].update(table_gib=gib, **info)
                print(f"      fio at iodepth {depth}: {fio[depth]['fio_iops']:,.0f} IOPS "
                      f"(queue depth at the disk {fio[depth]['fio_queue_depth']:.1f})", flush=True)
            ids, rows = np.concatenate(got_ids), np.concatenate(got_rows)
            wrong = cold_rows.verify(config, 0, ids, rows)
            for r in size_rows:
                r["rows_checked"], r["wrong_rows_in_run"] = len(ids), wrong
            print(f"      {len(ids):,} rows received, {wrong} differ from the loaded values", flush=True)
            rows_out += size_rows + list(fio.values())
            png = out.with_suffix(".png") if len(cfg.sizes_gb) == 1 else out.with_name(f"{out.stem}-{gib:g}GiB.png")
            out.parent.mkdir(parents=True, exist_ok=True)
            scale_plot.plot_cold(size_rows + list(fio.values()), png)
            if not cfg.keep:
                shutil.rmtree(db, ignore_errors=True)
    finally:
        if not cfg.keep and not cfg.db_dir:
            shutil.rmtree(base, ignore_errors=True)
    write_rows(rows_out, cfg.out)
    print(f"wrote {out} and its PNG")
    return 1 if any(r.get("wrong_rows_in_run") for r in rows_out) else 0
