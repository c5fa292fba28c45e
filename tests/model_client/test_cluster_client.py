"""A sharded, replicated memory service of real server processes on loopback: rows equal the source
array bit for bit across shards; kill -9 of a replica during a read loop costs no failed request
and no wrong row; with every replica of a shard gone a lookup fails clearly, then recovers when one
comes back; a replica holding another shard is refused."""
import threading
import time

import numpy as np
import pytest
import torch

from core.cluster import ClusterConfig
from model_client import MemoryServiceError
from model_client.cluster_client import ClusterClient
from model_client.service_tier import ServiceTier

from ..served import Server, expected_rows, fill_store, free_port

LAYER, TABLE = 2, "layer2"  # bfloat16 rows of 80 B


@pytest.fixture(scope="module")
def shard_stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    paths = []
    for shard in range(2):
        path = base / f"shard{shard}"
        fill_store(path, dtypes={LAYER: "bfloat16"}, shard=shard, shards=2)
        paths.append(path)
    return paths


def start_cluster(paths, tmp_path, replicas=2):
    ports = [[free_port() for _ in range(replicas)] for _ in paths]
    cluster = ClusterConfig([[f"127.0.0.1:{p}" for p in shard] for shard in ports])
    config = tmp_path / "cluster.json"
    config.write_text(cluster.to_json())
    servers = [[Server(path, "--port", str(port), "--cluster", str(config), "--shard", str(i), workers=1)
                for port in shard_ports] for i, (path, shard_ports) in enumerate(zip(paths, ports))]
    for shard in servers:
        for server in shard:
            server.wait_serving()
    return cluster, config, servers


def stop_all(servers):
    for shard in servers:
        for server in shard:
            server.stop()


def test_rows_match_the_source_across_shards(shard_stores, tmp_path):
    expect = expected_rows(LAYER)
    cluster, config, servers = start_cluster(shard_stores, tmp_path)
    try:
        with ClusterClient(str(config)) as client:
            ids = np.random.default_rng(0).integers(0, len(expect), 5000)
            ids[:4] = [0, len(expect) - 1, len(expect) // 2 - 1, len(expect) // 2]   # both sides of the cut
            ids[10:20] = ids[3]                                                      # duplicates
            assert np.array_equal(client.lookup(TABLE, ids), expect[ids])
            assert client.stats.requests >= 2 and client.stats.failovers == 0
            tier = ServiceTier(client)                            # a prefetcher's backing store
            unique = np.unique(ids)
            out = torch.empty(len(unique), expect.shape[1], dtype=torch.uint8)
            tier.get_many(TABLE, torch.from_numpy(unique), out, tier.describe(TABLE, fresh=True).version)
            assert np.array_equal(out.numpy(), expect[unique])
    finally:
        stop_all(servers)


def test_kill_a_replica_during_reads_and_then_a_whole_shard(shard_stores, tmp_path):
    expect = expected_rows(LAYER)
    cluster, config, servers = start_cluster(shard_stores, tmp_path)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, len(expect), 2000) for _ in range(16)]
    done, results = threading.Event(), {"ok": 0, "wrong": 0, "failed": 0}
    try:
        client = ClusterClient(str(config), timeout_s=10.0, try_timeout_s=2.0)

        def read_loop():
            i = 0
            while not done.is_set():
                ids = batches[i % len(batches)]
                try:
                    rows = client.lookup(TABLE, ids)
                    results["ok" if np.array_equal(rows, expect[ids]) else "wrong"] += 1
                except MemoryServiceError:
                    results["failed"] += 1
                i += 1
        reader = threading.Thread(target=read_loop)
        reader.start()
        time.sleep(1.0)
        servers[0][0].kill()                                      # kill -9 one replica of shard 0
        time.sleep(2.0)
        done.set()
        reader.join(30)
        assert results["failed"] == 0 and results["wrong"] == 0 and results["ok"] > 10, results
        assert client.stats.failovers >= 1

        for server in servers[1]:                                 # every replica of shard 1
            server.kill()
        with pytest.raises(MemoryServiceError, match="shard 1: no replica answered"):
            ClusterClient(str(config), timeout_s=1.5, try_timeout_s=0.5).lookup(TABLE, batches[0])
        port = int(cluster.shards[1][0].rsplit(":", 1)[1])
        servers[1][0] = Server(shard_stores[1], "--port", str(port), "--cluster", str(config), "--shard", "1",
                               workers=1)
        servers[1][0].wait_serving()                              # one comes back: reads recover
        assert np.array_equal(client.lookup(TABLE, batches[1]), expect[batches[1]])
        client.close()
    finally:
        done.set()
        stop_all(servers)


def test_a_replica_of_another_shard_is_refused(shard_stores, tmp_path):
    port = free_port()
    config = tmp_path / "bad.json"
    config.write_text(ClusterConfig([[f"127.0.0.1:{port}"], [f"127.0.0.1:{free_port()}"]]).to_json())
    with pytest.raises(RuntimeError, match="is shard 1 of 2, but this server is shard 0 of 2"):
        Server(shard_stores[1], "--port", str(port), "--cluster", str(config), "--shard", "0",
               workers=1).wait_serving()
