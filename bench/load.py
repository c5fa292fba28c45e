"""`engram-memory bench load`: many clients at once against one service: does any call get lost?

`clients` MemoryClients (each with `channels` channels, so one lookup stream per channel) spread
over `processes` client processes, each looking up batches of random rows of a real table in a
loop for `duration_s`, every row checked against the table. A call is lost when lookup raises;
the server's own counters say how many streams it turned away or replaced (stream_governor.py).
Issue 13 found 48 clients x 4 channels losing 2,948 of 10,141 calls to "Concurrent RPC limit
exceeded"; this measures the same load.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .report import machine, write_rows


@dataclass
class LoadBenchConfig:
    clients: int = field(default=48, metadata={"help": "MemoryClients looking up at once"})
    channels: int = field(default=4, metadata={"help": "channels (and lookup streams) per client"})
    processes: int = field(default=4, metadata={"help": "client processes the clients are spread over"})
    batch_rows: int = field(default=4096, metadata={"help": "row ids per lookup"})
    duration_s: float = field(default=20.0, metadata={"help": "seconds of load"})
    server_workers: int = field(default=0, metadata={"help": "server processes (0: serve's default)"})
    target: str = field(default="", metadata={
        "help": "load a running service at host:port instead (its table layer1; rows then not checked)"})
    out: str = field(default="bench-out/load.json", metadata={"help": "JSON output path (bench-out/ is not tracked)"})

    def __post_init__(self):
        for name in ("clients", "channels", "processes", "batch_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoadBenchConfig.{name} must be >= 1 (got {getattr(self, name)})")
        if self.duration_s <= 0:
            raise ValueError(f"LoadBenchConfig.duration_s must be > 0 (got {self.duration_s})")


def _client_process(target, table, clients, channels, batch_rows, duration_s, start_at, expect_path, results):
    from model_client import MemoryClient
    expect = np.load(expect_path, mmap_mode="r") if expect_path else None
    counts = {"calls": 0, "lost": 0, "wrong_rows": 0}
    errors, latencies, lock = {}, [], threading.Lock()

    def one(seed):
        rng = np.random.default_rng(seed)
        with MemoryClient(target, channels=channels) as client:
            num_rows = client.describe(table).num_rows
            while time.time() < start_at:
                time.sleep(0.01)
            while time.time() < start_at + duration_s:
                ids = rng.integers(0, num_rows, batch_rows)
                t0 = time.perf_counter()
                try:
                    rows = client.lookup(table, ids)
                    wrong = 0 if expect is None else int((rows != expect[ids]).any(axis=1).sum())
                    with lock:
                        counts["calls"] += 1
                        counts["wrong_rows"] += wrong
                        latencies.append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001 a lost call, whatever it raised
                    with lock:
                        counts["calls"] += 1
                        counts["lost"] += 1
                        errors[str(e)[:160]] = errors.get(str(e)[:160], 0) + 1
    threads = [threading.Thread(target=one, args=(os.getpid() * 1000 + i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put((counts, errors, latencies))


def measure(target: str, table: str, cfg: LoadBenchConfig, expect_path: str = "") -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 5 + cfg.clients * 0.1  # every client connected before the clock starts
    per = [cfg.clients // cfg.processes + (i < cfg.clients % cfg.processes) for i in range(cfg.processes)]
    procs = [ctx.Process(target=_client_process, args=(target, table, n, cfg.channels, cfg.batch_rows,
                                                       cfg.duration_s, start_at, expect_path, results))
             for n in per if n]
    for p in procs:
        p.start()
    answers = [results.get(timeout=cfg.duration_s + 300) for _ in procs]
    for p in procs:
        p.join()
    counts = {k: sum(a[0][k] for a in answers) for k in ("calls", "lost", "wrong_rows")}
    errors = {}
    for _, e, _ in answers:
        for k, v in e.items():
            errors[k] = errors.get(k, 0) + v
    latencies = sorted(x for _, _, lat in answers for x in lat) or [0.0]
    return {**counts, "errors": errors, "rows_per_s": (counts["calls"] - counts["lost"]) * cfg.batch_rows / cfg.duration_s,
            "p50_ms": 1e3 * latencies[len(latencies) // 2],
            "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def _server_counters(metrics_port: int) -> dict:
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("engram_streams_evicted_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            out[f"streams_{reason}"] = int(float(line.rsplit(" ", 1)[1]))
    return out


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ~0.8M rows of 64 B (bfloat16 x 32): big enough that lookups are real gathers, small enough to
# build in a few seconds; the load is about calls, not bytes.
TABLE_CONFIG = dict(engram_vocab_size=[50_000, 50_000], n_embed_per_ngram=256, n_head_per_ngram=8,
                    layer_ids=[1], row_dtype="bfloat16")


def build_table(workdir: str) -> tuple[str, str]:
    """A real store holding layer1 of TABLE_CONFIG, and the table's rows as .npy (to check rows)."""
    from core.row_format import RowFormat
    from core.store import TableStore
    from core.table_init import seeded_rows
    from memory_service.checkpoint import RandomRows
    from memory_service.loader import load_layer
    from model_client import EngramConfig, TableGeometry
    config = EngramConfig(**TABLE_CONFIG)
    db = os.path.join(workdir, "db")
    store = TableStore(db, bulk=True)
    try:
        load_layer(store, config, 1, RandomRows(0, 1, config.head_dim), "bench", 0, progress=False)
    finally:
        store.close()
    rows = TableGeometry.from_config(config).rows(1)
    expect = RowFormat(config.row_dtype, config.head_dim).encode(seeded_rows(0, 1, 0, rows, config.head_dim))
    path = os.path.join(workdir, "expect.npy")
    np.save(path, expect)
    return db, path


def run(cfg: LoadBenchConfig) -> int:
    from memory_service.process import ServiceProcess
    info, workdir = machine(), tempfile.mkdtemp(prefix="engram-load-")
    try:
        if cfg.target:
            result, server = measure(cfg.target, "layer1", cfg), {}
        else:
            db, expect = build_table(workdir)
            flags = ["--workers", str(cfg.server_workers)] if cfg.server_workers else []
            metrics_port = _free_port()
            service = ServiceProcess(db, *flags, workers=cfg.server_workers or min(8, os.cpu_count() or 1),
                                     metrics_port=metrics_port)
            try:
                service.wait_serving()
                result = measure(service.target, "layer1", cfg, expect)
                server = _server_counters(metrics_port)
            finally:
                service.stop()
        row = {"bench": "load", "clients": cfg.clients, "channels_per_client": cfg.channels,
               "client_processes": cfg.processes, "batch_rows": cfg.batch_rows, "duration_s": cfg.duration_s,
               **result, **server, **info}
        print(f"{cfg.clients} clients x {cfg.channels} channels, {cfg.batch_rows}-row lookups for "
              f"{cfg.duration_s:.0f} s: {result['calls']:,} calls, {result['lost']:,} lost, "
              f"{result['wrong_rows']:,} wrong rows; p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; "
              f"server streams: {server or 'n/a'}")
        for message, count in sorted(result["errors"].items(), key=lambda kv: -kv[1])[:5]:
            print(f"  {count:>6} x {message}")
        out = write_rows([row], cfg.out or os.path.join(tempfile.gettempdir(), "engram-bench-load.json"))
        print(f"wrote {out}")
        return 0 if result["lost"] == 0 and result["wrong_rows"] == 0 else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
