"""WorkerMetrics: a model worker's data path in Prometheus (`worker --metrics-port`).

Per Engram layer (the table `layer{L}`) and tier: lookups, hits and misses of the device and host
row caches, rows and bytes that came from each tier below the device cache (host cache, host
mirror, service), the exposed wait of every step (a histogram: the time a layer waited for its
rows after the compute before it), and table version switches (hot reloads). The prefetcher keeps
these as plain counters; `update()` exports what changed since its last call (the worker calls it
once per round), so the hot path pays nothing for monitoring.
"""
from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

PREFIX = "engram_worker_"
# exposed wait: 10 us .. 1 s (a decode step of the demo model is ~1-10 ms on CPU, 0.2-11 ms on a GPU)
WAIT_BUCKETS = (1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.25, 1.0)

LOOKUPS = Counter(PREFIX + "cache_lookups", "Row lookups in a cache tier", ["layer", "tier"])
HITS = Counter(PREFIX + "cache_hits", "Rows found in a cache tier", ["layer", "tier"])
MISSES = Counter(PREFIX + "cache_misses", "Rows not found in a cache tier", ["layer", "tier"])
ROWS = Counter(PREFIX + "rows_fetched", "Rows read from a tier below the device cache", ["layer", "tier"])
BYTES = Counter(PREFIX + "bytes_fetched", "Row bytes read from a tier below the device cache", ["layer", "tier"])
WAIT = Histogram(PREFIX + "exposed_wait_seconds", "Time a layer waited for its rows, per step", ["layer"],
                 buckets=WAIT_BUCKETS)
SWITCHES = Counter(PREFIX + "version_switches", "Table versions switched to while running (hot reload)", ["layer"])
ROUNDS = Counter(PREFIX + "rounds", "Rounds of the workload finished")
TOKENS = Counter(PREFIX + "tokens", "Tokens processed", ["phase"])


def serve(port: int, host: str = "0.0.0.0") -> None:
    start_http_server(port, addr=host)


class WorkerMetrics:
    def __init__(self, prefetcher):
        self.p = prefetcher
        self._seen: dict = {}

    def _delta(self, key, value: float) -> float:
        before = self._seen.get(key, 0)
        self._seen[key] = value
        return max(0, value - before)

    def update(self, prefill_tokens: int = 0, decode_tokens: int = 0) -> None:
        p = self.p
        for layer, table in p.tables.items():
            label = str(layer)
            tiers = p.tiers
            for tier in (tiers.device_cache, tiers.host_cache):
                if tier is None:
                    continue
                stats = tier.stats(table)
                for metric, name in ((LOOKUPS, "lookups"), (HITS, "hits"), (MISSES, "misses")):
                    metric.labels(label, tier.name).inc(self._delta((table, tier.name, name), getattr(stats, name)))
                if tier is tiers.host_cache:
                    rows = self._delta((table, "host", "rows_in"), stats.hits)
                    ROWS.labels(label, "host").inc(rows)
                    BYTES.labels(label, "host").inc(rows * p.row_bytes[table])
            mirrored = tiers.host_mirror.rows_by_table.get(table, 0) if tiers.host_mirror is not None else 0
            if tiers.host_mirror is not None:
                rows = self._delta((table, "mirror"), mirrored)
                ROWS.labels(label, "host_mirror").inc(rows)
                BYTES.labels(label, "host_mirror").inc(rows * p.row_bytes[table])
            host_hits = tiers.host_cache.stats(table).hits if tiers.host_cache is not None else 0
            rows = self._delta((table, "service"), p.rows_below_device.get(layer, 0) - mirrored - host_hits)
            ROWS.labels(label, "service").inc(rows)
            BYTES.labels(label, "service").inc(rows * p.row_bytes[table])
            waits = p.exposed_wait_s.get(layer, [])
            for wait in waits[self._seen.get((layer, "waits"), 0):]:
                WAIT.labels(label).observe(wait)
            self._seen[(layer, "waits")] = len(waits)
            SWITCHES.labels(label).inc(self._delta((table, "switches"), sum(1 for s in p.switches if s[0] == table)))
        TOKENS.labels("prefill").inc(prefill_tokens)
        TOKENS.labels("decode").inc(decode_tokens)
        ROUNDS.inc()
