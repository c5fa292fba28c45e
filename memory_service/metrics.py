"""Prometheus metrics of the memory service, shared by its worker processes.

prometheus_client's multiprocess mode: each worker writes its samples to files under
$PROMETHEUS_MULTIPROC_DIR (set by the parent before it starts workers), and the parent's HTTP
endpoint sums them. Import this module only after that variable is set. The parent adds what it
reads itself at each scrape (ServiceCollector): the store's tables, versions, rows and bytes, the
server processes and their memory and CPU, and the build; so /metrics says something before the
first request.
"""
from __future__ import annotations

import os
import platform

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# 100 us .. 10 s: a cached lookup of one row takes ~0.5 ms over loopback, 65,536 rows ~10-20 ms.
LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 10)

REQUESTS = Counter("engram_requests_total", "Requests answered, by RPC, table and status code",
                   ["rpc", "table", "code"])
ROWS = Counter("engram_rows_total", "Rows served, by RPC and table", ["rpc", "table"])
BYTES = Counter("engram_bytes_total", "Row bytes served, by RPC and table", ["rpc", "table"])
ERRORS = Counter("engram_errors_total", "Failed requests, by RPC and status code", ["rpc", "code"])
LATENCY = Histogram("engram_request_seconds", "Time to answer one request, by RPC and table",
                    ["rpc", "table"], buckets=LATENCY_BUCKETS)


class ServiceCollector:
    """Gauges read at scrape time by the parent: the store (`db`) and the server processes (pids())."""

    def __init__(self, db: str, pids):
        self.db, self.pids = db, pids

    def collect(self):
        from importlib.metadata import PackageNotFoundError, version

        import grpc
        import lmdb
        import numpy
        try:
            ours = version("engram-memory")
        except PackageNotFoundError:
            ours = "unknown"
        build = GaugeMetricFamily("engram_build_info", "The running build", labels=["version", "python", "grpc",
                                                                                      "lmdb", "numpy"])
        build.add_metric([ours, platform.python_version(), grpc.__version__, lmdb.__version__, numpy.__version__], 1)
        yield build
        yield from self._store()
        yield from self._processes()

    def _store(self):
        from core.store import StoreError, TableStore
        versions = GaugeMetricFamily("engram_table_versions", "Versions of a table in the store", labels=["table"])
        rows = GaugeMetricFamily("engram_table_rows", "Rows of a table's published version", labels=["table"])
        published = GaugeMetricFamily("engram_table_published_version", "A table's published version (0: none)",
                                      labels=["table"])
        disk = GaugeMetricFamily("engram_store_bytes", "Bytes of the store's data.mdb, and of its free pages",
                                 labels=["kind"])
        try:
            store = TableStore(self.db, readonly=True)
        except (StoreError, OSError):
            return
        try:
            manifests = store.manifests()
            tables = sorted({m.table for m in manifests})
            for table in tables:
                mine = [m for m in manifests if m.table == table]
                current = store.current_version(table)
                versions.add_metric([table], len(mine))
                published.add_metric([table], current)
                rows.add_metric([table], next((m.stored_rows for m in mine if m.version == current), 0))
            disk.add_metric(["file"], store.disk_bytes())
            disk.add_metric(["free"], store.free_bytes())
        except StoreError:
            return
        finally:
            store.close()
        count = GaugeMetricFamily("engram_tables", "Tables with a published version")
        count.add_metric([], sum(1 for t in tables if store_published(manifests, t)))
        yield from (count, versions, published, rows, disk)

    def _processes(self):
        pids = list(self.pids())
        alive = GaugeMetricFamily("engram_server_processes", "Server processes answering on the port")
        alive.add_metric([], len(pids))
        memory = GaugeMetricFamily("engram_server_resident_bytes", "Resident memory of a server process",
                                   labels=["pid"])
        cpu = CounterMetricFamily("engram_server_cpu_seconds", "CPU time of a server process", labels=["pid"])
        tick = os.sysconf("SC_CLK_TCK")
        for pid in pids:
            try:
                status = open(f"/proc/{pid}/status").read()
                stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
            memory.add_metric([str(pid)], rss * 1024)
            cpu.add_metric([str(pid)], (int(stat[11]) + int(stat[12])) / tick)  # utime + stime
        yield from (alive, memory, cpu)


def store_published(manifests, table: str) -> bool:
    return any(m.table == table and m.status == "published" for m in manifests)


def serve_metrics(port: int, host: str, db: str = "", pids=lambda: []) -> None:
    """Start the parent's /metrics endpoint: every worker's samples, and the parent's own gauges."""
    from prometheus_client.process_collector import ProcessCollector
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    ProcessCollector(registry=registry)
    if db:
        registry.register(ServiceCollector(db, pids))
    start_http_server(port, addr=host, registry=registry)


def worker_exited(pid: int) -> None:
    multiprocess.mark_process_dead(pid)
CORRUPT_ROWS = Counter("engram_corrupt_rows_total", "Rows whose bytes failed their checksum on the read path "
                       "(answered DATA_LOSS, never served), by table", ["table"])
STREAMS_EVICTED = Counter("engram_streams_evicted_total", "Lookup streams cancelled to make room or for idling, "
                          "and refused for lack of room, by reason", ["reason"])
