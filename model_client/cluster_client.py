"""ClusterClient: lookups against a sharded, replicated memory service, with failover.

The same `lookup(table, row_ids, out=)` as MemoryClient. A batch is split by shard with one
`searchsorted` over the shard boundaries (core/cluster.py), every shard's part is sent at
once, and the answers are scattered back into request order. Within a shard, calls rotate over the
replicas; a replica that fails (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, RESOURCE_EXHAUSTED, or
DATA_LOSS: its copy of those rows is damaged) is left for the next one, each try bounded by
`try_timeout_s`, until the request's deadline: then the lookup raises, naming the shard and what
each replica said; when every replica answered DATA_LOSS it raises DATA_LOSS at once. Other statuses (a bad id, an unknown
table) are the caller's error and raise at once. Every replica's manifest must say it holds that
shard of that many, so a misconfigured replica can never return another shard's rows.
"""
from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
from prometheus_client import Counter

from core.cluster import ClusterConfig
from core.manifest import TableManifest, shard_bounds

from .memory_client import MemoryClient, MemoryServiceError, checked_row_ids, checked_tables

FAILOVER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DATA_LOSS)
FAILOVERS = Counter("engram_client_failovers", "shard requests retried on another replica", ["shard"])
SHARD_ERRORS = Counter("engram_client_shard_errors", "shard requests no replica answered", ["shard"])


@dataclass
class FailoverStats:
    requests: int = 0           # shard requests
    failovers: int = 0          # tries after a replica failed
    failed: int = 0             # shard requests that raised (no replica answered in time)
    worst_failover_s: float = 0.0  # longest time from a first failure to the answer


class ClusterClient:
    def __init__(self, cluster: ClusterConfig | str, timeout_s: float = 30.0, try_timeout_s: float = 5.0,
                 channels: int = 2, shared_memory: bool | None = None, backoff_s: float = 0.05, **security):
        """security: MemoryClient's tls_ca, tls_cert, tls_key and token, for every replica."""
        self.cluster = cluster if isinstance(cluster, ClusterConfig) else ClusterConfig.load(cluster)
        self.timeout_s, self.try_timeout_s, self.backoff_s = timeout_s, try_timeout_s, backoff_s
        self.replicas = [[MemoryClient(address, channels=channels, timeout_s=try_timeout_s, retries=0,
                                       shared_memory=shared_memory, **security) for address in shard]
                         for shard in self.cluster.shards]
        self._turn = [itertools.count() for _ in self.replicas]
        self.cooldown_s = 1.0  # a replica that just failed is tried last for this long
        self._down_until = [[0.0] * len(shard) for shard in self.replicas]
        self._address = {id(c): a for shard, clients in zip(self.cluster.shards, self.replicas)
                         for a, c in zip(shard, clients)}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.replicas)), thread_name_prefix="shard")
        self._manifests: dict[tuple[str, int], TableManifest] = {}
        self.stats = FailoverStats()
        self._lock = threading.Lock()

    @property
    def num_shards(self) -> int:
        return len(self.replicas)

    def check(self, config, tokenizer_sha256: str | None = None, compressed_vocab_size: int | None = None) -> dict:
        """Each Engram layer's table, checked against the model's config (MemoryClient.check)."""
        return checked_tables(self, config, tokenizer_sha256, compressed_vocab_size)

    def describe(self, table: str, version: int = 0, refresh: bool = False) -> TableManifest:
        """The table's manifest as shard 0 holds it (num_rows is the whole table's)."""
        key = (table, version)
        if refresh:
            for shard in self.replicas:
                for client in shard:
                    client.forget_manifest(table, version)
        if refresh or key not in self._manifests:
            deadline = time.monotonic() + self.timeout_s
            self._manifests[key] = self._on_shard(0, lambda c, t: self._checked(c, 0, table, version, t), deadline)
        return self._manifests[key]

    def lookup(self, table: str, row_ids, version: int = 0, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 [N, row_bytes] in request order (duplicates included), from every shard at once."""
        manifest = self.describe(table, version)
        ids = checked_row_ids(row_ids, manifest)
        if out is None:
            out = np.empty((len(ids), manifest.row_bytes), dtype=np.uint8)
        deadline = time.monotonic() + self.timeout_s
        bounds = np.asarray(shard_bounds(manifest.num_rows, self.num_shards))
        shard_of = np.searchsorted(bounds, ids, side="right") - 1
        jobs = []
        for shard in range(self.num_shards):
            at = np.flatnonzero(shard_of == shard)
            if len(at):
                fetch = lambda c, t, part=ids[at], s=shard: self._checked_lookup(c, s, table, version, part, t)
                jobs.append((at, self._pool.submit(self._on_shard, shard, fetch, deadline)))
        for at, future in jobs:
            out[at] = future.result()
        return out

    def _checked(self, client: MemoryClient, shard: int, table: str, version: int, timeout: float) -> TableManifest:
        manifest = client.describe(table, version, timeout_s=timeout)
        if (manifest.shard, manifest.shards) != (shard, self.num_shards):
            raise MemoryServiceError(grpc.StatusCode.FAILED_PRECONDITION, f"replica {self._address[id(client)]} "
                                     f"holds shard {manifest.shard} of {manifest.shards} of table {table}, "
                                     f"not shard {shard} of {self.num_shards}: check its store and the cluster config")
        return manifest

    def _checked_lookup(self, client, shard, table, version, ids, timeout):
        self._checked(client, shard, table, version, timeout)
        return client.lookup(table, ids, version, timeout_s=timeout)

    def _on_shard(self, shard: int, call, deadline: float):
        """call(client, timeout) on the shard's replicas in turn until one answers or time runs out."""
        replicas = self.replicas[shard]
        now = time.monotonic()
        up = [i for i in range(len(replicas)) if self._down_until[shard][i] <= now]
        turn = next(self._turn[shard])
        first = up[turn % len(up)] if up else turn  # rotate over the replicas not known to be down
        failed_at, errors, attempt, damaged = None, [], 0, set()
        with self._lock:
            self.stats.requests += 1
        while True:
            client = replicas[(first + attempt) % len(replicas)]
            left = deadline - time.monotonic()
            try:
                answer = call(client, max(0.001, min(self.try_timeout_s, left)))
            except MemoryServiceError as e:
                if e.code not in FAILOVER:
                    raise
                index = (first + attempt) % len(replicas)
                errors.append(f"{self.cluster.shards[shard][index]}: {e}")
                if e.code == grpc.StatusCode.DATA_LOSS:
                    damaged.add(index)
                    damage = errors[-1]
                    if len(damaged) == len(replicas):  # no replica holds good rows: waiting will not help
                        with self._lock:
                            self.stats.failed += 1
                        SHARD_ERRORS.labels(str(shard)).inc()
                        raise MemoryServiceError(grpc.StatusCode.DATA_LOSS, f"shard {shard}: every replica's "
                                                 f"rows are damaged ({'; '.join(errors[-len(replicas):])})") from None
                self._down_until[shard][index] = time.monotonic() + self.cooldown_s
                failed_at = failed_at or time.monotonic()
                attempt += 1
                if deadline - time.monotonic() <= 0:
                    with self._lock:
                        self.stats.failed += 1
                    SHARD_ERRORS.labels(str(shard)).inc()
                    if damaged:  # the replicas that answered hold damaged rows; the others did not answer
                        raise MemoryServiceError(grpc.StatusCode.DATA_LOSS, f"shard {shard}: no replica served "
                                                 f"good rows within {self.timeout_s} s; damaged: {damage}") from None
                    raise MemoryServiceError(grpc.StatusCode.UNAVAILABLE, f"shard {shard}: no replica answered "
                                             f"within {self.timeout_s} s ({len(errors)} tries; last: "
                                             f"{'; '.join(errors[-len(replicas):])})") from None
                with self._lock:
                    self.stats.failovers += 1
                FAILOVERS.labels(str(shard)).inc()
                if attempt % len(replicas) == 0:  # every replica failed once: let them come back
                    time.sleep(min(self.backoff_s * 2 ** (attempt // len(replicas)), max(0.0, deadline - time.monotonic())))
                continue
            if failed_at is not None:
                with self._lock:
                    self.stats.worst_failover_s = max(self.stats.worst_failover_s, time.monotonic() - failed_at)
            return answer

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for shard in self.replicas:
            for client in shard:
                client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
