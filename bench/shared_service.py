"""`engram-memory bench workers`: several model workers, one per GPU, reading through one memory service.

The deployment of data-parallel replicas that share one copy of the tables: this bench loads the
tables once, starts one `engram-memory serve`, then for each --worker-counts N starts N worker
processes (worker i on GPU i mod the GPUs visible; on a CPU, the cores split between them), each
running the e2e comparison (bench/comparison.py) against that service. A barrier starts every
worker's run of each mode together, so the local runs contend with each other as the remote ones
do, and each worker's remote/local ratio is of runs under the same load.

Aggregate tokens/s of N workers is the sum of their rates in runs that started together (the
median over repeats); its ratio to one worker is the scaling. Every worker's outputs must match its
local tables bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .comparison import ComparisonConfig
from .report import machine, write_rows

PHASES = ("prefill", "decode")


@dataclass
class SharedServiceBenchConfig(ComparisonConfig):
    worker_counts: list[int] = field(default_factory=lambda: [1, 2], metadata={
        "help": "numbers of workers to run at once against the one service (each a run of its own; the "
                "first is the baseline of the scaling)"})
    out: str = field(default="bench-out/workers.json", metadata={
        "help": "JSON file of the result; bench-out/ is not tracked (the committed figures are in bench/results/)"})
    barrier_timeout_s: float = field(default=1800.0, metadata={
        "help": "longest one worker waits for the others at a run's start before the bench gives up"})

    def __post_init__(self):
        super().__post_init__()
        if not self.worker_counts or min(self.worker_counts) < 1:
            raise ValueError(f"--worker-counts: give one or more counts >= 1 (got {self.worker_counts})")
        if self.colocated:
            raise ValueError("--colocated: this bench measures workers that share one memory service over gRPC")

    def worker(self, target: str) -> ComparisonConfig:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(ComparisonConfig)}
        return ComparisonConfig(**{**values, "service": target})


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (a user's "2,3" stays 2 and 3)."""
    import torch
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    named = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named[:count] if named else [str(i) for i in range(count)]


def _worker(index: int, count: int, cfg: ComparisonConfig, gpu: str | None, barrier, out: str) -> None:
    """One worker process (its GPU set in its environment before it started), its share of the cores on
    a CPU, then the comparison against the service."""
    import torch
    if gpu is None:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // count))
    from .comparison import run_comparison
    result = run_comparison(cfg, log=lambda msg: print(f"[worker {index}/{count}] {msg}", flush=True),
                            before_run=lambda: barrier.wait())
    result["gpu"] = gpu
    Path(out).write_text(json.dumps(result))


def run_workers(cfg: SharedServiceBenchConfig, target: str, count: int, gpus: list[str]) -> list[dict]:
    """`count` workers at once against the service at `target` (worker i on gpus[i mod len]); each one's
    comparison."""
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: CUDA and threads set before they start
    barrier = ctx.Barrier(count, timeout=cfg.barrier_timeout_s)
    with tempfile.TemporaryDirectory(prefix="engram-workers-") as tmp:
        outs = [str(Path(tmp) / f"worker{i}.json") for i in range(count)]
        mine = [gpus[i % len(gpus)] if gpus else None for i in range(count)]
        procs = [ctx.Process(target=_worker, args=(i, count, cfg.worker(target), mine[i], barrier, outs[i]))
                 for i in range(count)]
        first_failed, inherited = None, os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            for p, gpu in zip(procs, mine):  # a spawned process starts with this environment: CUDA sees one GPU
                if gpu is not None:
                    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
                p.start()
            _restore("CUDA_VISIBLE_DEVICES", inherited)
            while any(p.is_alive() for p in procs):  # one failing must not leave the rest at the barrier
                first_failed = next((i for i, p in enumerate(procs) if p.exitcode not in (None, 0)), None)
                if first_failed is not None:
                    break
                time.sleep(0.2)
        finally:  # a failure, or the bench itself interrupted: no worker outlives it
            _restore("CUDA_VISIBLE_DEVICES", inherited)
            if any(p.is_alive() for p in procs):
                barrier.abort()
                for p in procs:
                    if p.is_alive():
                        p.terminate()
        for p in procs:
            p.join()
        if first_failed is None:
            first_failed = next((i for i, p in enumerate(procs) if p.exitcode != 0), None)
        if first_failed is not None:
            raise RuntimeError(f"worker {first_failed} of {count} failed (exit code {procs[first_failed].exitcode}; "
                               "its traceback is above); the other workers were stopped")
        return [json.loads(Path(o).read_text()) for o in outs]


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def summarize(count: int, results: list[dict]) -> dict:
    """N workers' comparisons -> aggregate tokens/s by phase and mode, and each worker's ratios."""
    first = results[0]
    row = {"workers": count, "gpus": [r["gpu"] for r in results],
           "outputs_match": all(r["outputs_match"] for r in results),
           **{k: first[k] for k in ("backbone_parameters", "prefill_tokens", "decode_tokens", "table_bytes",
                                    "device_cache_bytes", "kernels", "dtype")}}
    for phase in PHASES:
        for mode in ("local", "remote"):
            runs = zip(*(r[f"{phase}_{mode}_run_tokens_per_s"] for r in results))  # runs that started together
            row[f"{phase}_{mode}_aggregate_tokens_per_s"] = statistics.median(sum(run) for run in runs)
        row[f"{phase}_ratio_remote_to_local_by_worker"] = [r[f"{phase}_ratio_remote_to_local"] for r in results]
        row[f"{phase}_remote_tokens_per_s_by_worker"] = [r[f"{phase}_remote_tokens_per_s"] for r in results]
    row["device_cache_hit_rate_by_worker"] = [r["device_cache_hit_rate"] for r in results]
    return row


def report(rows: list[dict]) -> str:
    base = rows[0]
    lines = [f"{'workers':>7} {'phase':>7} {'remote tok/s':>13} {'vs first':>8} {'local tok/s':>12} "
             f"{'remote/local by worker':>24}  match"]
    for row in rows:
        for phase in PHASES:
            agg = row[f"{phase}_remote_aggregate_tokens_per_s"]
            ratios = ", ".join(f"{x:.2f}" for x in row[f"{phase}_ratio_remote_to_local_by_worker"])
            lines.append(f"{row['workers']:>7} {phase:>7} {agg:>13,.0f} "
                         f"{agg / base[f'{phase}_remote_aggregate_tokens_per_s']:>7.2f}x "
                         f"{row[f'{phase}_local_aggregate_tokens_per_s']:>12,.0f} {ratios:>24}  "
                         f"{'YES' if row['outputs_match'] else 'NO'}")
    return "\n".join(lines)


def run(cfg: SharedServiceBenchConfig) -> int:
    from core.tokenizer import get_compressed_tokenizer
    from memory_service.process import ServiceProcess

    from .comparison import ensure_tables, table_store_path
    config = cfg.engram_config()
    gpus = visible_gpus() if cfg.torch_device.type == "cuda" else []
    target, server = cfg.service, None
    if not target:
        db = table_store_path(cfg.data_dir, config, cfg.checkpoint)
        ensure_tables(config, db, get_compressed_tokenizer(config.tokenizer), cfg.checkpoint)
        print(f"starting the memory service ({cfg.server_workers} processes) on {db}, shared by every worker ...")
        server = ServiceProcess(db, workers=cfg.server_workers)
        target = server.target
    try:
        if server:
            server.wait_serving()
        rows = []
        for count in cfg.worker_counts:
            print(f"{count} worker(s) on {'GPUs ' + ', '.join(sorted({gpus[i % len(gpus)] for i in range(count)})) if gpus else 'CPU'} "
                  f"against {target} ...", flush=True)
            rows.append(summarize(count, run_workers(cfg, target, count, gpus)))
    finally:
        if server:
            server.stop()
    result = {"bench": "workers", "service": target, "server_workers": cfg.server_workers, "gpus_visible": len(gpus),
              "device": str(cfg.torch_device), "sequences": cfg.workload.sequences, "decode_steps": cfg.workload.decode_steps,
              "repeats": cfg.repeats, "rows": rows, **machine()}
    for row in rows[1:]:
        for phase in PHASES:
            row[f"{phase}_scaling"] = (row[f"{phase}_remote_aggregate_tokens_per_s"]
                                       / rows[0][f"{phase}_remote_aggregate_tokens_per_s"])
    print("\n" + report(rows))
    print(f"wrote {write_rows([result], cfg.out)}")
    return 0 if all(row["outputs_match"] for row in rows) else 1
