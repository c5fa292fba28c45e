"""kill -9 of a server in the middle of a Publish: after a restart the table serves the old version
or the new one, whole, never a mix and never a missing table."""
import threading
import time

import grpc
import numpy as np
import pytest

from core.store import TableStore
from model_client import MemoryClient
from protos import pb2

from ..served import Server, expected_rows, fill_store

LAYER, TABLE = 2, "layer2"


@pytest.mark.parametrize("delay_ms", [0, 2, 10])
def test_kill_during_publish(tmp_path, delay_ms):
    db = tmp_path / "db"
    fill_store(db, seed=0, dtypes={LAYER: "bfloat16"})                     # v1, published
    fill_store(db, seed=1, dtypes={LAYER: "bfloat16"}, publish=False)      # v2, complete, unpublished
    server = Server(db, workers=1)
    server.wait_serving()
    publish = pb2.PublishRequest(table=TABLE, version=2).SerializeToString()

    def call():
        with grpc.insecure_channel(f"unix:{db / 'admin.sock'}") as channel:   # admin: the local socket
            try:
                channel.unary_unary("/engram_memory.v1.AdminService/Publish")(publish, timeout=10)
            except grpc.RpcError:
                pass  # killed mid-call: either outcome is allowed, a mix is not
    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(delay_ms / 1000)
    server.kill()
    caller.join(15)

    store = TableStore(db, readonly=True)
    current = store.current_version(TABLE)
    statuses = {m.version: m.status for m in store.manifests(TABLE)}
    store.close()
    assert current in (1, 2) and statuses[current] == "published"
    assert list(statuses.values()).count("published") == 1

    server = Server(db, workers=1)
    try:
        server.wait_serving()
        ids = np.arange(0, len(expected_rows(LAYER)), 13)
        with MemoryClient(server.target) as client:
            rows = client.lookup(TABLE, ids)
        assert np.array_equal(rows, expected_rows(LAYER, seed=current - 1)[ids])  # whole, one version
    finally:
        server.stop()
