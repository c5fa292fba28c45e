"""The gRPC service against a real `engram-memory serve` on loopback."""
import json
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core.errors import BadRowIds
from core.manifest import TableManifest
from core.row_format import RowFormat
from core.table_init import seeded_rows
from memory_service.process import ServiceProcess
from model_client import MemoryClient, MemoryServiceError
from protos import pb2, pb2_grpc

from ..served import DTYPE_LAYERS, Server, expected_rows, fill_store, tiny_config


def raw_stub(server):
    channel = grpc.insecure_channel(server.target)
    return channel, pb2_grpc.MemoryServiceStub(channel)


def lookup_raw(stub, table, payload, version=0):
    return stub.Lookup(pb2.LookupRequest(table=table, version=version, row_ids=payload), timeout=10)


@pytest.mark.parametrize("layer", list(DTYPE_LAYERS))
def test_round_trip_is_bit_exact_for_every_dtype(served_store, layer):
    server, _, manifests = served_store
    m = manifests[layer]
    expect = expected_rows(layer)
    with MemoryClient(server.target, channels=2, max_rows_per_request=1000) as client:
        ids = np.random.default_rng(layer).integers(0, m.num_rows, 5000)
        ids[:3] = [0, m.num_rows - 1, ids[10]]                     # duplicates included
        rows = client.lookup(m.table, ids)
        assert rows.shape == (5000, m.row_bytes) and rows.flags.writeable
        np.testing.assert_array_equal(rows, expect[ids])
        values = client.lookup_values(m.table, ids[:100])
        np.testing.assert_array_equal(values, RowFormat(m.row_dtype, m.head_dim).decode(expect[ids[:100]]))
        np.testing.assert_array_equal(client.lookup(m.table, ids.reshape(50, 100)), expect[ids])
        assert client.lookup(m.table, np.array([], dtype=np.int64)).shape == (0, m.row_bytes)


def test_concurrent_clients_threads_and_streams(served_store):
    server, _, manifests = served_store
    expect = {layer: expected_rows(layer) for layer in DTYPE_LAYERS}
    errors = []

    def worker(seed):
        try:
            with MemoryClient(server.target, channels=2, max_rows_per_request=700) as client:
                rng = np.random.default_rng(seed)
                for _ in range(20):
                    layer = int(rng.integers(1, 5))
                    ids = rng.integers(0, manifests[layer].num_rows, int(rng.integers(1, 3000)))
                    np.testing.assert_array_equal(client.lookup(f"layer{layer}", ids), expect[layer][ids])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    channel, stub = raw_stub(server)
    ids = [np.arange(i, i + 50) for i in range(0, 1000, 50)]
    requests = iter([pb2.LookupRequest(table="layer2", row_ids=x.astype("<i8").tobytes(), request_id=k)
                     for k, x in enumerate(ids)])
    answers = list(stub.StreamLookup(requests, timeout=30))
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert [a.request_id for a in answers] == list(range(20))
    for a, x in zip(answers, ids):
        assert a.rows == expect[2][x].tobytes()
    channel.close()


def test_bad_requests_get_clear_statuses_and_the_server_keeps_serving(served_store):
    server, _, manifests = served_store
    n = manifests[1].num_rows
    channel, stub = raw_stub(server)
    good = np.array([1, 2, 3], dtype="<i8").tobytes()
    cases = [
        ("layer1", np.array([4, n + 5], "<i8").tobytes(), 0, grpc.StatusCode.INVALID_ARGUMENT,
         f"row id {n + 5} at position 1 is outside table layer1 v1's rows [0, {n})"),
        ("layer1", np.array([-1], "<i8").tobytes(), 0, grpc.StatusCode.INVALID_ARGUMENT, "row id -1"),
        ("layer1", b"\x01" * 12, 0, grpc.StatusCode.INVALID_ARGUMENT, "has 12 bytes, not a multiple of 8"),
        ("layer9", good, 0, grpc.StatusCode.NOT_FOUND, "table 'layer9' has no published version"),
        ("layer1", good, 42, grpc.StatusCode.NOT_FOUND, "table 'layer1' has no version 42"),
        ("", good, 0, grpc.StatusCode.INVALID_ARGUMENT, "table must be 1-128 characters"),
        ("x" * 16384, good, 0, grpc.StatusCode.INVALID_ARGUMENT, "(16384 characters)"),
    ]
    for table, payload, version, code, message in cases:
        with pytest.raises(grpc.RpcError) as e:
            lookup_raw(stub, table, payload, version)
        assert e.value.code() == code and message in e.value.details(), e.value.details()
        answer = lookup_raw(stub, "layer1", good)  # still serving, still right
        assert answer.rows == expected_rows(1)[[1, 2, 3]].tobytes()
    with pytest.raises(grpc.RpcError) as e:
        stub.DescribeTable(pb2.DescribeTableRequest(table="nope"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()
    with MemoryClient(server.target) as client:
        with pytest.raises(BadRowIds, match=rf"row_ids\[2\] = {n} is outside table layer1"):
            client.lookup("layer1", [0, 1, n])
        with pytest.raises(MemoryServiceError, match="NOT_FOUND.*layer9"):
            client.lookup("layer9", [0])
        with pytest.raises(TypeError, match="must be integers"):
            client.lookup("layer1", np.array([0.5]))


def test_oversize_requests(tmp_path):
    db = tmp_path / "db"
    fill_store(db)
    server = Server(db, "--max-request-rows", "1000", "--max-message-mb", "4", workers=1)
    try:
        server.wait_serving()
        channel, stub = raw_stub(server)
        with pytest.raises(grpc.RpcError) as e:
            lookup_raw(stub, "layer1", np.arange(1001, dtype="<i8").tobytes())
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1001 row ids; the limit is 1000 per request" in e.value.details()
        channel.close()
        with MemoryClient(server.target, max_rows_per_request=1000) as client:  # a client that chunks
            ids = np.arange(0, 9000) % 11_000
            np.testing.assert_array_equal(client.lookup("layer1", ids), expected_rows(1)[ids])
    finally:
        assert server.stop() == 0


def test_catalog_health_reflection_metrics_and_stats(served_store):
    server, db, manifests = served_store
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    assert server.health("engram_memory.v1.MemoryService") == health_pb2.HealthCheckResponse.SERVING
    with MemoryClient(server.target) as client:
        tables = client.tables()
        assert sorted(t.table for t in tables) == ["layer1", "layer2", "layer3", "layer4"]
        m = client.describe("layer4")
        assert isinstance(m, TableManifest) and m.row_dtype == "fp8-e4m3" and m.checksum == manifests[4].checksum
        client.lookup("layer1", [1, 2])
        stats = client.stats()
        assert {s.pid for s in stats} and all(s.uptime_s > 0 for s in stats)
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"engram_memory.v1.MemoryService", "engram_memory.v1.AdminService", "grpc.health.v1.Health"} <= names
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'engram_requests_total{code="OK",rpc="Lookup",table="layer1"}' in text
    assert 'engram_request_seconds_bucket{le="0.001",rpc="Lookup",table="layer1"}' in text
    assert "engram_rows_total" in text and "engram_bytes_total" in text
    logs = server.logs()
    assert all({"ts", "level", "pid", "msg"} <= set(entry) for entry in logs)


def test_publishing_while_clients_read(tmp_path):
    """Readers see the old version or the whole new one, never a mix, and switch without restart."""
    db = tmp_path / "db"
    fill_store(db, seed=0)
    server = Server(db)
    server.wait_serving()
    v1, v2 = expected_rows(3, seed=0), expected_rows(3, seed=1)
    seen, errors, stop = set(), [], threading.Event()

    def reader():
        try:
            with MemoryClient(server.target, channels=2, max_rows_per_request=500) as client:
                ids = np.arange(v1.shape[0])
                while not stop.is_set():
                    manifest_version = None
                    rows = client.lookup("layer3", ids)
                    if np.array_equal(rows, v1):
                        manifest_version = 1
                    elif np.array_equal(rows, v2):
                        manifest_version = 2
                    else:
                        raise AssertionError("a lookup mixed rows of two versions")
                    seen.add(manifest_version)
                    client._manifests.clear()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    from core.store import TableStore
    from memory_service.checkpoint import RandomRows
    from memory_service.loader import load_layer
    store = TableStore(db)
    cfg = tiny_config(row_dtype="float16")
    load_layer(store, cfg, 3, RandomRows(1, 3, cfg.head_dim), "sha", 98_627, progress=False, chunk_rows=1024)
    store.close()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert seen == {1, 2}
    with MemoryClient(server.target) as client:
        np.testing.assert_array_equal(client.lookup("layer3", [5, 6]), v2[[5, 6]])
    assert server.stop() == 0


def test_admin_service_creates_writes_and_publishes(served_store):
    server, db, manifests = served_store
    cfg = tiny_config(row_dtype="bfloat16", layer_ids=[1, 2, 3, 4])
    m = manifests[2]
    new = TableManifest(**{**m.__dict__, "version": 0, "status": "loading", "checksum": "", "rows_written": 0,
                           "source": "admin test"})
    values = seeded_rows(9, 2, 0, m.num_rows, cfg.head_dim)
    rows = RowFormat("bfloat16", cfg.head_dim).encode(values)
    with grpc.insecure_channel(server.target) as channel, \
            grpc.insecure_channel(f"unix:{db / 'admin.sock'}") as local:   # no admin token: the local socket
        admin = pb2_grpc.AdminServiceStub(local)
        version = admin.CreateVersion(pb2.CreateVersionRequest(table="layer2", manifest_json=new.to_json())).version
        assert version == 2

        def messages(start, stop, step=700):
            for i in range(start, stop, step):
                yield pb2.WriteRowsRequest(table="layer2", version=version, start_row=i,
                                           rows=rows[i:min(i + step, stop)].tobytes())
        with pytest.raises(grpc.RpcError) as e:  # must start at a chunk boundary
            admin.WriteRows(messages(5, 100))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "multiple of chunk_rows=1024" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:  # must end at a chunk boundary or the table's end
            admin.WriteRows(messages(0, 1500))
        assert "inside a chunk" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            admin.Publish(pb2.PublishRequest(table="layer2", version=version))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "incomplete" in e.value.details()
        assert admin.WriteRows(messages(0, 4096)).rows_written == 4096
        assert admin.WriteRows(messages(4096, m.num_rows)).rows_written == m.num_rows - 4096
        assert admin.Publish(pb2.PublishRequest(table="layer2", version=version)).previous_version == 1
        time.sleep(0.2)
        memory = pb2_grpc.MemoryServiceStub(channel)
        answer = memory.Lookup(pb2.LookupRequest(table="layer2", row_ids=np.array([7, 8], "<i8").tobytes()))
        assert answer.version == version and answer.rows == rows[[7, 8]].tobytes()
        with pytest.raises(grpc.RpcError) as e:
            admin.DropVersion(pb2.DropVersionRequest(table="layer2", version=version))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        admin.Publish(pb2.PublishRequest(table="layer2", version=1))
        admin.DropVersion(pb2.DropVersionRequest(table="layer2", version=version))
        time.sleep(0.2)
        answer = memory.Lookup(pb2.LookupRequest(table="layer2", row_ids=np.array([7], "<i8").tobytes()))
        assert answer.version == 1 and answer.rows == expected_rows(2)[[7]].tobytes()
        with pytest.raises(grpc.RpcError) as e:
            admin.CreateVersion(pb2.CreateVersionRequest(table="layer2", manifest_json="{bad"))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "manifest_json" in e.value.details()


def test_sigterm_is_graceful_and_a_missing_store_is_a_clear_error(tmp_path):
    import subprocess

    from ..served import EXE
    out = subprocess.run([EXE, "serve", "--db", str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no table store there" in out.stderr
    db = tmp_path / "db"
    fill_store(db)
    server = Server(db, workers=2)
    server.wait_serving()
    assert server.stop() == 0
    messages = [e["msg"] for e in server.logs()]
    assert messages.count("worker stopped") == 2 and messages[-1] == "stopped"
    assert json.dumps(server.logs()[0])  # every line is one JSON object


def test_a_busy_port_is_one_line_and_a_stopped_servers_port_is_free_again(tmp_path):
    """A second server on a taken --port or --metrics-port exits 2 with one line, never joining the first's
    SO_REUSEPORT group; once the first stops, its port (TIME_WAIT connections and all) serves again."""
    db = tmp_path / "db"
    fill_store(db, dtypes={2: "bfloat16"})
    first = Server(db, workers=1)
    first.wait_serving()
    with MemoryClient(first.target) as client:
        client.lookup("layer2", np.arange(10))
    for flags, named in ((("--port", str(first.port)), "--port"),
                         (("--metrics-port", str(first.metrics_port)), "--metrics-port")):
        with pytest.raises(RuntimeError, match="exited with 2") as e:
            ServiceProcess(db, *flags, workers=1)
        tail = [line for line in str(e.value).splitlines() if line.strip()][-1]
        assert f"{named} " in tail and "pick another" in tail and "Traceback" not in str(e.value)
    port = first.port
    assert first.stop() == 0
    again = Server(db, "--port", str(port), workers=1)
    again.wait_serving()
    with MemoryClient(again.target) as client:
        np.testing.assert_array_equal(client.lookup("layer2", np.arange(10)), expected_rows(2)[:10])
    again.stop()
