"""Floors of the read path, in one process: what any service can at best approach.

- in-RAM: `np.take(table, ids, axis=0)` from a numpy array holding the whole table, the fastest form
  (with `out=` and the default mode numpy buffers the result and runs ~1.7x slower here); the floor
  every ratio is against. numpy backs such an array with transparent huge pages, a file mapping gets
  4 KiB pages: on random rows of a multi-GB table that TLB difference is most of the store's gap;
- store: the memory service's own gather from LMDB's memory map (StoreReader), no RPC, every row
  checked against its stored sum (row_check.py), and the same gather unchecked: the check's cost;
- all cores: the same np.take on every core at once, as threads (np.take drops the GIL) and as forked
  processes sharing the array, whichever moves more rows: what the machine's memory can deliver to
  a service with as many workers. The service's headline ratio is against this one;
- per-key: one LMDB key per row and a Python loop of `get`s, the design DESIGN.md warns against.

Batches are sorted unique random row ids, the form MemoryClient sends after deduplicating.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import threading
import time

import lmdb
import numpy as np

from core.reader import StoreReader
from core.store import TableStore

BATCHES = (1, 64, 4096, 65536)


def batches(num_rows: int, size: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.unique(rng.integers(0, num_rows, size)) for _ in range(count)]


def measure(fn, ids: list[np.ndarray], duration_s: float) -> dict:
    """Call fn on the batches round robin for duration_s; rows/s and per-call latency."""
    fn(ids[0])
    latencies, rows, i = [], 0, 0
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn(ids[i % len(ids)])
        latencies.append(time.perf_counter() - t0)
        rows += len(ids[i % len(ids)])
        i += 1
        if time.perf_counter() - start >= duration_s and i >= 3:
            break
    wall = time.perf_counter() - start
    latencies.sort()
    return {"rows_per_s": rows / wall, "p50_ms": 1e3 * statistics.median(latencies),
            "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "calls": i}


def _take_loop(ram: np.ndarray, ids: list[np.ndarray], start_at: float, duration_s: float) -> int:
    """Rows np.take'n from start_at for duration_s (one worker of the all-cores floor)."""
    while time.time() < start_at:
        time.sleep(0.001)
    rows, i = 0, 0
    while time.time() < start_at + duration_s:
        np.take(ram, ids[i % len(ids)], axis=0)
        rows += len(ids[i % len(ids)])
        i += 1
    return rows


def _process_worker(ram, ids, start_at, duration_s, conn) -> None:
    conn.send(_take_loop(ram, ids, start_at, duration_s))
    conn.close()


def all_cores(ram: np.ndarray, ids: list[np.ndarray], duration_s: float, workers: int = 0) -> dict:
    """np.take on `workers` (default: every core) threads, then as many forked processes: the faster."""
    workers = workers or os.cpu_count() or 1
    out = {}
    totals: list[int] = []
    start_at = time.time() + 0.1
    threads = [threading.Thread(target=lambda: totals.append(_take_loop(ram, ids, start_at, duration_s)))
               for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["threads"] = sum(totals) / duration_s
    ctx, start_at = mp.get_context("fork"), time.time() + 0.3   # children inherit the array: no copy
    pipes = [ctx.Pipe(duplex=False) for _ in range(workers)]
    procs = [ctx.Process(target=_process_worker, args=(ram, ids, start_at, duration_s, w)) for _, w in pipes]
    for proc in procs:
        proc.start()
    out["processes"] = sum(r.recv() for r, _ in pipes) / duration_s
    for proc in procs:
        proc.join()
    how = max(out, key=out.get)
    return {"rows_per_s": out[how], "workers": workers, "how": how, "threads_rows_per_s": out["threads"],
            "processes_rows_per_s": out["processes"]}


def in_ram_table(db: str, table: str) -> np.ndarray:
    store = TableStore(db, readonly=True)
    reader = StoreReader(store)
    try:
        m = store.manifest(table)
        return reader.lookup(table, 0, np.arange(m.num_rows))[1]  # a plain in-RAM copy
    finally:
        reader.close()
        store.close()


def floors(db: str, table: str, duration_s: float, seed: int = 0, sizes=BATCHES) -> list[dict]:
    """np.take from RAM and the store's own gather (rows checked, and unchecked), per batch size."""
    ram = in_ram_table(db, table)
    store = TableStore(db, readonly=True)
    reader, unchecked = StoreReader(store), StoreReader(store, verify_rows=False)
    rows = []
    try:
        for size in sizes:
            ids = batches(len(ram), size, 64, seed + size)
            ram_result = measure(lambda x: np.take(ram, x, axis=0), ids, duration_s)
            store_result = measure(lambda x: reader.lookup(table, 0, x), ids, duration_s)
            raw_result = measure(lambda x: unchecked.lookup(table, 0, x), ids, duration_s)
            wide = all_cores(ram, ids, duration_s)
            wide_row = {"rows_per_s": wide["rows_per_s"], "p50_ms": float("nan"), "p99_ms": float("nan"),
                        "calls": 0, **{k: v for k, v in wide.items() if k != "rows_per_s"}}
            for path, result in (("in-ram np.take", ram_result),
                                 (f"in-ram np.take, all {wide['workers']} cores ({wide['how']})", wide_row),
                                 ("store gather", store_result), ("store gather, rows unchecked", raw_result)):
                rows.append({"bench": "floor", "path": path, "row_bytes": int(ram.shape[1]), "batch_rows": size,
                             **result, "ratio_to_floor": result["rows_per_s"] / ram_result["rows_per_s"],
                             "ratio_to_all_cores_floor": result["rows_per_s"] / wide["rows_per_s"]})
    finally:
        reader.close()
        unchecked.close()
        store.close()
    return rows


def per_key_baseline(path: str, row_bytes: int, num_rows: int = 1 << 20, size: int = 4096,
                     duration_s: float = 2.0) -> dict:
    """One LMDB key per row, read with a Python loop of txn.get."""
    env = lmdb.open(path, map_size=1 << 36)
    value = bytes(row_bytes)
    with env.begin(write=True) as txn:
        for key in range(num_rows):
            txn.put(key.to_bytes(8, "big"), value)
    with env.begin(buffers=True) as txn:
        def lookup(ids):
            return [bytes(txn.get(int(k).to_bytes(8, "big"))) for k in ids]
        result = measure(lookup, batches(num_rows, size, 16, 1), duration_s)
    env.close()
    return {"bench": "floor", "path": "per-key lmdb get loop", "row_bytes": row_bytes, "batch_rows": size,
            "table_rows": num_rows, **result}
