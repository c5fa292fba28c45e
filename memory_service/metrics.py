"""Prometheus metrics of the memory service, shared by its worker processes.

prometheus_client's multiprocess mode: each worker writes its samples to files under
$PROMETHEUS_MULTIPROC_DIR (set by the parent before it starts workers), and the parent's HTTP
endpoint sums them. Import this module only after that variable is set.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client import multiprocess

# 100 us .. 10 s: a cached lookup of one row takes ~0.5 ms over loopback, 65,536 rows ~10-20 ms.
LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 10)

REQUESTS = Counter("engram_requests_total", "Requests answered, by RPC, table and status code",
                   ["rpc", "table", "code"])
ROWS = Counter("engram_rows_total", "Rows served, by RPC and table", ["rpc", "table"])
BYTES = Counter("engram_bytes_total", "Row bytes served, by RPC and table", ["rpc", "table"])
ERRORS = Counter("engram_errors_total", "Failed requests, by RPC and status code", ["rpc", "code"])
LATENCY = Histogram("engram_request_seconds", "Time to answer one request, by RPC and table",
                    ["rpc", "table"], buckets=LATENCY_BUCKETS)


def serve_metrics(port: int, host: str) -> None:
    """Start the parent's /metrics endpoint, aggregating every worker's samples."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)


def worker_exited(pid: int) -> None:
    multiprocess.mark_process_dead(pid)
CORRUPT_ROWS = Counter("engram_corrupt_rows_total", "Rows whose bytes failed their checksum on the read path "
                       "(answered DATA_LOSS, never served), by table", ["table"])
STREAMS_EVICTED = Counter("engram_streams_evicted_total", "Lookup streams cancelled to make room or for idling, "
                          "and refused for lack of room, by reason", ["reason"])
