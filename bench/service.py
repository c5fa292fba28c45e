"""`engram-memory bench service`: the memory service against its floors, in one run.

For rows of 160 B and 256 B and batches of 1, 64, 4,096 and 65,536 rows: rows/s and p50/p99
latency of MemoryClient.lookup against a real `engram-memory serve` on loopback, with 1 and with 4
client processes, next to two floors measured in the same run (bench/store.py): `np.take` from RAM
on one core, and on every core at once (threads or processes, the faster), beside the store's own
gather. Every figure is a ratio to both floors of the same row size and batch; the all-cores one is
the headline (what the machine's memory can deliver), the single-core one what it was before.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from memory_service.process import command

from . import store as floors_mod, tables
from .report import machine, write_rows


@dataclass
class ServiceBenchConfig:
    duration_s: float = field(default=2.0, metadata={"help": "seconds per measurement"})
    workers: int = field(default=0, metadata={"help": "server processes (0: one per CPU core)"})
    clients: list[int] = field(default_factory=lambda: [1, 4], metadata={
        "type": int, "help": "numbers of client processes to measure"})
    transports: list[str] = field(default_factory=lambda: ["grpc", "shm"], metadata={
        "help": "how rows come back: grpc (in the response) and/or shm (the client's shared-memory "
                "segment, same host only)"})
    batches: list[int] = field(default_factory=lambda: list(floors_mod.BATCHES), metadata={
        "type": int, "help": "batch sizes (rows per lookup) to measure"})
    table_size: str = field(default="demo", metadata={
        "help": "demo: the demo geometry's layer 1 (10.3M rows: 2.5 + 1.5 GiB, built once into --db, a few "
                "minutes); small: 1.2M rows, built in seconds, for a quick look"})
    row_checks: list[str] = field(default_factory=lambda: ["on"], metadata={
        "help": "serve with every row checked against its stored sum (on, the default) and/or without "
                "(off: `serve --no-verify-rows`), to measure what the check costs"})
    target: str = field(default="", metadata={
        "help": "measure a running service at host:port instead (its published tables; no floors)"})
    token_file: str = field(default="", metadata={"help": "with --target: file holding the service's read token"})
    db: str = field(default="", metadata={
        "help": "store to build the benchmark tables in (reused if present; default: a temporary one)"})
    out: str = field(default="bench-out/service.json", metadata={"help": "JSON output path; bench-out/ is not tracked (the committed figures are in bench/results/)"})

    def __post_init__(self):
        if self.duration_s <= 0:
            raise ValueError(f"ServiceBenchConfig.duration_s must be > 0 (got {self.duration_s})")
        if not self.clients or min(self.clients) < 1:
            raise ValueError(f"ServiceBenchConfig.clients must list numbers >= 1 (got {self.clients})")
        if self.table_size not in tables.SIZES:
            raise ValueError(f"ServiceBenchConfig.table_size must be one of {', '.join(tables.SIZES)} "
                             f"(got {self.table_size!r})")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"ServiceBenchConfig.batches must list numbers >= 1 (got {self.batches})")
        if not self.row_checks or not set(self.row_checks) <= {"on", "off"}:
            raise ValueError(f"ServiceBenchConfig.row_checks must list on and/or off (got {self.row_checks})")
        if not self.transports or not set(self.transports) <= {"grpc", "shm"}:
            raise ValueError(f"ServiceBenchConfig.transports must list grpc and/or shm (got {self.transports})")


def _client(target, table, size, num_rows, duration_s, seed, start_at, results, shm=False, token=None):
    """One client process: lookups of one batch size until the deadline; reports its latencies."""
    from model_client import MemoryClient
    ids = floors_mod.batches(num_rows, size, 32, seed)
    with MemoryClient(target, channels=4, shared_memory=shm, token=token) as client:
        if shm and client._arena is None:
            raise RuntimeError("shared memory was asked for but is not available")
        for x in ids[:4]:
            client.lookup(table, x)
        while time.time() < start_at:
            time.sleep(0.001)
        latencies, rows, i = [], 0, 0
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < duration_s:
            t0 = time.perf_counter()
            client.lookup(table, ids[i % len(ids)])
            latencies.append(time.perf_counter() - t0)
            rows += len(ids[i % len(ids)])
            i += 1
        results.put((rows, time.perf_counter() - t_start, latencies))


def measure_service(target, table, size, num_rows, clients, duration_s, shm: bool = False, token=None) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 3.0 + 0.5 * clients  # every client connected and warm before the clock starts
    procs = [ctx.Process(target=_client, args=(target, table, size, num_rows, duration_s, 100 + c, start_at,
                                               results, shm, token)) for c in range(clients)]
    for p in procs:
        p.start()
    answers = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    latencies = sorted(x for _, _, lat in answers for x in lat)
    rows = sum(r for r, _, _ in answers)
    wall = max(w for _, w, _ in answers)
    return {"rows_per_s": rows / wall, "p50_ms": 1e3 * latencies[len(latencies) // 2],
            "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "calls": len(latencies)}


def _start_server(db: str, workers: int, *flags: str) -> tuple[subprocess.Popen, str, Path]:
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    proc = subprocess.Popen([*command(), "serve", "--db", db, "--port", "0", "--workers", str(workers),
                             "--metrics-port", "0", *flags], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"msg": "serving"' in line:
                port = int(line.split('"port": ')[1].split(",")[0])
                return proc, f"127.0.0.1:{port}", log
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not start: {log.read_text()}")


def run_against(cfg: ServiceBenchConfig) -> int:
    """Lookups against a running service (e.g. docker-compose's): every published table."""
    from core.credentials import read_secret
    from model_client import MemoryClient
    token = read_secret(cfg.token_file, "--token-file") or None
    with MemoryClient(cfg.target, token=token) as client:
        tables = client.tables()
    if not tables:
        raise ValueError(f"the service at {cfg.target} has no published tables")
    rows, info = [], machine()
    for manifest in tables:
        for size in cfg.batches:
            for clients in cfg.clients:
                result = measure_service(cfg.target, manifest.table, size, manifest.num_rows, clients, cfg.duration_s,
                                         token=token)
                rows.append({"bench": "service", "path": f"grpc {cfg.target}, {clients} client process(es)",
                             "table": manifest.table, "row_bytes": manifest.row_bytes, "batch_rows": size,
                             "clients": clients, "table_rows": manifest.num_rows, **result, **info})
                print(f"  {manifest.table} ({manifest.row_bytes} B) x {size:>6} rows, {clients} client(s): "
                      f"{result['rows_per_s']:>12,.0f} rows/s  p50 {result['p50_ms']:.2f} ms  "
                      f"p99 {result['p99_ms']:.2f} ms", flush=True)
    print(f"wrote {write_rows(rows, cfg.out)}")
    return 0


def run(cfg: ServiceBenchConfig) -> int:
    if cfg.target:
        return run_against(cfg)
    workdir = tempfile.mkdtemp(prefix="engram-bench-")
    db = cfg.db or os.path.join(workdir, "db")
    info = machine()
    rows = []
    try:
        stores = tables.build(db, size=cfg.table_size)
        for row_bytes, (path, manifest) in stores.items():
            print(f"floors, {row_bytes} B rows ...", flush=True)
            rows += [{**r, "table_rows": manifest.num_rows, **info}
                     for r in floors_mod.floors(path, manifest.table, cfg.duration_s, sizes=cfg.batches)]
        rows.append({**floors_mod.per_key_baseline(os.path.join(workdir, "perkey"), 256, duration_s=cfg.duration_s),
                     **info})
        for (row_bytes, (path, manifest)), checks in [(s, c) for s in stores.items() for c in cfg.row_checks]:
            proc, target, log = _start_server(path, cfg.workers, *(["--no-verify-rows"] if checks == "off" else []))
            try:
                for size in cfg.batches:
                    floor = next(r for r in rows if r["path"] == "in-ram np.take" and r["row_bytes"] == row_bytes
                                 and r["batch_rows"] == size)
                    wide = next(r for r in rows if r["path"].startswith("in-ram np.take, all")
                                and r["row_bytes"] == row_bytes and r["batch_rows"] == size)
                    for transport, clients in [(t, c) for t in cfg.transports for c in cfg.clients]:
                        result = measure_service(target, manifest.table, size, manifest.num_rows, clients,
                                                 cfg.duration_s, shm=transport == "shm")
                        rows_via = "rows in the response" if transport == "grpc" else "rows via shm"
                        unchecked = ", rows unchecked" if checks == "off" else ""
                        row = {"bench": "service", "path": f"grpc, {rows_via}{unchecked}, {clients} client(s)",
                               "transport": transport, "row_check": checks,
                               "row_bytes": row_bytes, "batch_rows": size, "clients": clients,
                               "table_rows": manifest.num_rows,
                               "server_workers": cfg.workers or min(8, os.cpu_count() or 1), **result,
                               "ratio_to_floor": result["rows_per_s"] / floor["rows_per_s"],
                               "ratio_to_all_cores_floor": result["rows_per_s"] / wide["rows_per_s"], **info}
                        rows.append(row)
                        print(f"  {transport:<4} checks {checks:<3} {row_bytes} B x {size:>6} rows, {clients} client(s): {row['rows_per_s']:>12,.0f} "
                              f"rows/s  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
                              f"{row['ratio_to_all_cores_floor']:.1%} of all cores' np.take "
                              f"({row['ratio_to_floor']:.1%} of one)", flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
                log.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = write_rows(rows, cfg.out)
    print_table(rows)
    print(f"wrote {out}")
    return 0


def print_table(rows: list[dict]) -> None:
    print(f"\n{'path':<48}{'row B':>6}{'batch':>8}{'rows/s':>14}{'p50 ms':>9}{'p99 ms':>9}{'vs all cores':>13}"
          f"{'vs 1 core':>10}")
    for r in rows:
        wide = f"{r['ratio_to_all_cores_floor']:.1%}" if "ratio_to_all_cores_floor" in r else "-"
        ratio = f"{r['ratio_to_floor']:.1%}" if "ratio_to_floor" in r else "-"
        print(f"{r['path']:<48}{r['row_bytes']:>6}{r['batch_rows']:>8}{r['rows_per_s']:>14,.0f}"
              f"{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{wide:>13}{ratio:>10}")
