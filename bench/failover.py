"""`engram-memory bench failover`: a sharded, replicated service under kill -9, and a bounded soak.

Shards x replicas real server processes on loopback (each shard's store loaded with
`--shard I/N`), client processes reading random batches through ClusterClient for `duration_s`,
every row compared with the source array. Every `kill_every_s` one replica (never the last one up
in its shard) is killed with SIGKILL and restarted on its port `restart_after_s` later. Reported:
requests, failed requests, wrong rows, failovers, the worst failover latency, request p50/p99, and
the resident memory of the servers and clients at the start and the end.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .report import machine, process_tree, write_rows


@dataclass
class FailoverBenchConfig:
    shards: int = field(default=2, metadata={"help": "shards of the table"})
    replicas: int = field(default=2, metadata={"help": "replicas per shard"})
    clients: int = field(default=2, metadata={"help": "client processes"})
    duration_s: float = field(default=60.0, metadata={"help": "seconds of reads (600: the 10-minute soak)"})
    kill_every_s: float = field(default=8.0, metadata={"help": "seconds between kill -9s (0: none, a plain soak)"})
    restart_after_s: float = field(default=3.0, metadata={"help": "seconds a killed replica stays down"})
    batch_rows: int = field(default=4096, metadata={"help": "row ids per lookup"})
    vocab: int = field(default=100_000, metadata={
        "help": "engram_vocab_size per order: 100,000 gives a table of 1.6M rows x 128 B = 205 MB"})
    out: str = field(default="bench-out/failover.json", metadata={"help": "JSON output path; bench-out/ is not tracked (the committed figures are in bench/results/)"})

    def __post_init__(self):
        for name in ("shards", "replicas", "clients", "batch_rows", "vocab"):
            if getattr(self, name) < 1:
                raise ValueError(f"FailoverBenchConfig.{name} must be >= 1 (got {getattr(self, name)})")
        if self.duration_s <= 0 or self.kill_every_s < 0 or self.restart_after_s < 0:
            raise ValueError("FailoverBenchConfig.duration_s must be > 0 and the kill timings >= 0")


def _config(cfg):
    from model_client import EngramConfig
    return EngramConfig(engram_vocab_size=[cfg.vocab, cfg.vocab], layer_ids=[1], row_dtype="bfloat16")


def _rss_kib(pids, field: str = "RssAnon:") -> int:
    """Resident KiB summed over processes: RssAnon (heap; what a leak grows) by default, VmRSS
    with field="VmRSS:" (also counts the table pages a server has touched in its memory map)."""
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith(field):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


LATENCY_SAMPLES = 200_000


def _client(cluster_path, config_json, batch_rows, duration_s, seed, start_at, results):
    from core.malloc import trim
    from core.row_format import RowFormat
    from memory_service.checkpoint import RandomRows
    from model_client import EngramConfig, MemoryServiceError, TableGeometry
    from model_client.cluster_client import ClusterClient
    config = EngramConfig.from_dict(config_json)
    rows = TableGeometry.from_config(config).rows(1)
    expect = RowFormat(config.row_dtype, config.head_dim).encode(RandomRows(0, 1, config.head_dim).rows(0, rows))
    rng = np.random.default_rng(seed)
    # latencies: a reservoir sample in a buffer written once up front (untouched pages of a large
    # np.empty would fault in as it fills, and a growing list: either would look like a leak)
    latencies, count, failed, wrong, errors = np.full(LATENCY_SAMPLES, np.nan), 0, 0, 0, []
    with ClusterClient(cluster_path, timeout_s=10.0, try_timeout_s=2.0) as client:
        client.lookup("layer1", rng.integers(0, rows, batch_rows))
        while time.time() < start_at:
            time.sleep(0.01)
        trim()
        rss_start = _rss_kib([os.getpid()])
        t_start = time.monotonic()
        t_end = t_start + duration_s
        samples, next_sample = [], t_start
        while time.monotonic() < t_end:
            if time.monotonic() >= next_sample:  # resident memory over time: a leak keeps climbing
                trim()  # what is in use, not freed memory glibc keeps (core/malloc.py)
                samples.append(_rss_kib([os.getpid()]) / 1024)
                next_sample += duration_s / 10
            ids = rng.integers(0, rows, batch_rows)
            t0 = time.perf_counter()
            try:
                got = client.lookup("layer1", ids)
            except MemoryServiceError as e:
                failed += 1
                if len(errors) < 100:
                    errors.append(str(e)[:300])
                continue
            slot = count if count < len(latencies) else int(rng.integers(0, count + 1))
            if slot < len(latencies):
                latencies[slot] = time.perf_counter() - t0
            count += 1
            wrong += int(np.count_nonzero(np.any(got != expect[ids], axis=1)))
        stats = client.stats
    trim()
    rss_end = _rss_kib([os.getpid()])  # before the report below, whose latency list is ~6 MiB
    results.put({"requests": count + failed, "failed": failed, "wrong_rows": wrong,
                 "latencies": latencies[:min(count, len(latencies))].tolist(), "errors": errors[:5], "failovers": stats.failovers,
                 "worst_failover_s": stats.worst_failover_s, "rss_start_kib": rss_start, "rss_mib_samples": samples,
                 "rss_end_kib": rss_end})


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cfg: FailoverBenchConfig) -> int:
    from core.cluster import ClusterConfig
    from core.store import TableStore
    from core.tokenizer import get_compressed_tokenizer
    from memory_service.checkpoint import RandomRows
    from memory_service.loader import load_layer
    from memory_service.process import ServiceProcess

    config, tokenizer = _config(cfg), get_compressed_tokenizer("deepseek-v3")
    work = Path(tempfile.mkdtemp(prefix="engram-failover-"))
    stores = []
    for shard in range(cfg.shards):
        store = TableStore(work / f"shard{shard}", bulk=True)
        load_layer(store, config, 1, RandomRows(0, 1, config.head_dim), tokenizer.sha256, tokenizer.num_compressed,
                   progress=False, shard=shard, shards=cfg.shards)
        store.close()
        stores.append(work / f"shard{shard}")
    cluster = ClusterConfig([[f"127.0.0.1:{_free_port()}" for _ in range(cfg.replicas)] for _ in range(cfg.shards)])
    cluster_path = work / "cluster.json"
    cluster_path.write_text(cluster.to_json())

    def start(shard: int, replica: int) -> ServiceProcess:
        port = cluster.shards[shard][replica].rsplit(":", 1)[1]
        return ServiceProcess(stores[shard], "--port", port, "--cluster", str(cluster_path), "--shard", str(shard),
                              workers=1)

    servers = [[start(s, r) for r in range(cfg.replicas)] for s in range(cfg.shards)]
    for shard in servers:
        for server in shard:
            server.wait_serving()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 5
    procs = [ctx.Process(target=_client, args=(str(cluster_path), config.to_dict(), cfg.batch_rows, cfg.duration_s,
                                               c, start_at, results)) for c in range(cfg.clients)]
    for p in procs:
        p.start()
    while time.time() < start_at:
        time.sleep(0.05)
    def servers_rss_kib() -> int:
        return sum(_rss_kib(process_tree(x.proc.pid)) for shard in servers for x in shard)

    rss_servers_start = servers_rss_kib()
    kills, stop = [], threading.Event()

    def chaos():
        rng = random.Random(0)
        while not stop.wait(cfg.kill_every_s):
            shard, replica = rng.randrange(cfg.shards), rng.randrange(cfg.replicas)
            servers[shard][replica].kill()
            kills.append((shard, replica))
            if stop.wait(cfg.restart_after_s):
                break
            servers[shard][replica] = start(shard, replica)
            servers[shard][replica].wait_serving()

    server_samples = []

    def sample():
        while not stop.wait(cfg.duration_s / 10):
            server_samples.append(round(servers_rss_kib() / 1024, 1))
    threading.Thread(target=sample, daemon=True).start()
    chaos_thread = threading.Thread(target=chaos, daemon=True) if cfg.kill_every_s and cfg.replicas > 1 else None
    if chaos_thread:
        chaos_thread.start()
    answers = [results.get(timeout=cfg.duration_s + 120) for _ in procs]
    stop.set()
    if chaos_thread:
        chaos_thread.join(60)
    rss_servers_end = servers_rss_kib()
    for p in procs:
        p.join()
    for shard in servers:
        for server in shard:
            server.stop()
    latencies = sorted(x for a in answers for x in a["latencies"])
    row = {"bench": "failover", "shards": cfg.shards, "replicas": cfg.replicas, "clients": cfg.clients,
           "duration_s": cfg.duration_s, "batch_rows": cfg.batch_rows, "kills": len(kills),
           "requests": sum(a["requests"] for a in answers), "failed_requests": sum(a["failed"] for a in answers),
           "wrong_rows": sum(a["wrong_rows"] for a in answers), "failovers": sum(a["failovers"] for a in answers),
           "worst_failover_s": max(a["worst_failover_s"] for a in answers),
           "p50_ms": 1e3 * statistics.median(latencies) if latencies else None,
           "p99_ms": 1e3 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
           "server_rss_start_mib": rss_servers_start / 1024, "server_rss_end_mib": rss_servers_end / 1024,
           "client_rss_start_mib": sum(a["rss_start_kib"] for a in answers) / 1024,
           "client_rss_end_mib": sum(a["rss_end_kib"] for a in answers) / 1024,
           "server_rss_mib_samples": server_samples,
           "client_rss_mib_samples": [round(sum(x), 1) for x in zip(*(a["rss_mib_samples"] for a in answers))],
           "errors": [e for a in answers for e in a["errors"]][:5], **machine()}
    print(f"{row['requests']:,} requests ({row['batch_rows']} rows each) in {cfg.duration_s:.0f} s by {cfg.clients} "
          f"clients over {cfg.shards} shards x {cfg.replicas} replicas; {row['kills']} kill -9s")
    print(f"failed requests {row['failed_requests']}, wrong rows {row['wrong_rows']}, failovers {row['failovers']}, "
          f"worst failover {row['worst_failover_s'] * 1e3:.0f} ms, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms")
    print(f"resident anonymous memory: servers {row['server_rss_start_mib']:.0f} -> {row['server_rss_end_mib']:.0f} MiB, "
          f"clients {row['client_rss_start_mib']:.0f} -> {row['client_rss_end_mib']:.0f} MiB")
    print(f"  every {cfg.duration_s / 10:.0f} s, servers: {row['server_rss_mib_samples']} MiB")
    print(f"  every {cfg.duration_s / 10:.0f} s, clients: {row['client_rss_mib_samples']} MiB")
    for error in row["errors"]:
        print(f"  {error}")
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {write_rows([row], cfg.out)}")
    return 0 if not row["failed_requests"] and not row["wrong_rows"] else 1
