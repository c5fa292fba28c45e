"""Damaged stores, as a second process damages them: bytes flipped in a row chunk after publish are
DATA_LOSS naming table, version and rows (counted, never served, the server goes on), a cluster
client reads the rows from a healthy replica instead, and a truncated store is refused at open or,
truncated while serving, answers DATA_LOSS without a process dying."""
import subprocess
import time

import grpc
import numpy as np
import pytest

from core import chunk_map
from core.store import TableStore, chunk_key
from model_client import MemoryClient, MemoryServiceError

from ..served import EXE, Server, expected_rows, fill_store, free_port
from .test_attack_segments import attack, corrupt_rows_counted, no_worker_died

LAYER, TABLE = 2, "layer2"


def row_offset(db, row: int, layer: int = LAYER) -> int:
    """Where row `row` of layer L's published version lies in data.mdb (from the chunk map)."""
    store = TableStore(db, readonly=True)
    try:
        m = store.manifest(f"layer{layer}")
        with store.env.begin() as txn:
            entry = txn.get(chunk_key(m.table, m.version, row // m.chunk_rows), db=store.pages)
        return chunk_map._ENTRY.unpack_from(entry)[0] + (row % m.chunk_rows) * m.row_bytes
    finally:
        store.close()


def store_with(tmp_path, name="db"):
    db = tmp_path / name
    fill_store(db, dtypes={1: "float32", LAYER: "bfloat16"})
    return db


@pytest.mark.parametrize("flags", [("--read-mode", "off"),
                                   ("--read-mode", "threads", "--read-depth", "4", "--read-above-mb", "0"),
                                   ("--read-mode", "advise", "--read-above-mb", "0")],
                         ids=["page-faults", "read-threads", "read-advise"])
def test_flipped_bytes_are_data_loss_never_rows(tmp_path, flags):
    db = store_with(tmp_path)
    expect = expected_rows(LAYER)
    server = Server(db, *flags, workers=2)
    try:
        server.wait_serving()
        victim_row, neighbour = 1500, 1501                              # mid-chunk (chunks of 1024 rows)
        with MemoryClient(server.target, retries=0) as client:
            assert np.array_equal(client.lookup(TABLE, [victim_row, neighbour]), expect[[victim_row, neighbour]])
            attack("flip", file=str(db / "data.mdb"), offsets=[row_offset(db, victim_row) + 7])
            for shared in (True, False):                                # both ways rows come back
                with MemoryClient(server.target, retries=0, shared_memory=shared) as reader:
                    with pytest.raises(MemoryServiceError) as e:
                        reader.lookup(TABLE, np.arange(1400, 1600))
                    assert e.value.code == grpc.StatusCode.DATA_LOSS
                    message = str(e.value)
                    assert "table layer2 v1" in message and "row 1500 in chunk 1 (rows [1024, 2048))" in message
                    assert "1 of 200 rows" in message
                    # the rest of the chunk still serves, bit-exact
                    ok = np.r_[1024:1500, 1501:2048]
                    assert np.array_equal(reader.lookup(TABLE, ok), expect[ok])
        assert corrupt_rows_counted(server) >= 2
        assert [e for e in server.logs() if e.get("msg") == "corrupt rows refused"]
        no_worker_died(server)
    finally:
        server.stop()
    out = subprocess.run([EXE, "info", "--db", str(db), "--verify"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "1 corrupt chunk(s), first 1" in out.stdout


def test_a_cluster_client_reads_around_a_damaged_replica(tmp_path):
    from core.cluster import ClusterConfig
    from model_client.cluster_client import ClusterClient
    expect = expected_rows(LAYER)
    good, bad = store_with(tmp_path, "good"), store_with(tmp_path, "bad")
    attack("flip", file=str(bad / "data.mdb"), offsets=[row_offset(bad, 700) + 3, row_offset(bad, 3000) + 9])
    replicas = [Server(good, workers=1), Server(bad, workers=1)]
    try:
        for r in replicas:
            r.wait_serving()
        cluster = ClusterConfig([[r.target for r in replicas]])
        ids = np.arange(0, len(expect), 3)
        with ClusterClient(cluster, shared_memory=False) as client:
            for _ in range(6):                                          # every turn of the rotation
                assert np.array_equal(client.lookup(TABLE, ids), expect[ids])
            assert client.stats.failovers >= 1
        replicas[0].kill()                                              # only the damaged copy is left
        with ClusterClient(cluster, shared_memory=False, timeout_s=5) as client, \
                pytest.raises(MemoryServiceError) as e:
            client.lookup(TABLE, [700])
        assert e.value.code in (grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNAVAILABLE)
        assert "row 700" in str(e.value)                                # never a row
    finally:
        for r in replicas:
            r.stop()


def test_a_truncated_store_is_refused_at_open(tmp_path):
    db = store_with(tmp_path)
    size = (db / "data.mdb").stat().st_size
    attack("truncate", file=str(db / "data.mdb"), size=size // 2)
    out = subprocess.run([EXE, "serve", "--db", str(db), "--port", str(free_port()), "--metrics-port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"{db / 'data.mdb'} is truncated: it has {size // 2} B" in out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run([EXE, "info", "--db", str(db)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "is truncated" in out.stderr


def test_a_store_truncated_while_serving_is_data_loss_and_no_process_dies(tmp_path):
    db = store_with(tmp_path)
    server = Server(db, workers=2)
    try:
        server.wait_serving()
        with MemoryClient(server.target, retries=0) as client:
            assert client.lookup(TABLE, [5]).shape == (1, 80)
            pids = {s.pid for s in client.stats()}
            attack("truncate", file=str(db / "data.mdb"), size=64 << 10)
            time.sleep(0.3)
            for shared in (True, False):
                with MemoryClient(server.target, retries=0, shared_memory=shared) as reader:
                    for _ in range(4):                                  # every server process
                        with pytest.raises(MemoryServiceError, match="shrank to 65536 B while serving") as e:
                            reader.lookup(TABLE, np.arange(0, 12000, 7))
                        assert e.value.code == grpc.StatusCode.DATA_LOSS
            time.sleep(1.0)                                             # the health loop ran
            assert server.health() != 1                                 # not SERVING
            assert {s.pid for s in client.stats()} <= pids | set()      # the same processes
        no_worker_died(server)
    finally:
        server.stop()
