"""The smaller findings: a full disk during a load is one line naming the store and the bytes needed,
the partial version goes and the previous one keeps serving; a huge table name gets a short
INVALID_ARGUMENT, never an oversized reply."""
import os
import subprocess

import grpc
import numpy as np
import pytest

from core.store import TableStore
from protos import pb2

from ..served import EXE, expected_rows, fill_store


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB file system of its own (tmpfs), so a load really fills it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_clear_line_and_the_previous_version_keeps_serving(small_disk):
    db = small_disk / "db"
    fill_store(db, dtypes={1: "float32"})                               # layer1 v1, published
    # the demo preset's layer1 is 10,344,164 rows: far more than 24 MiB
    out = subprocess.run([EXE, "load", "--db", str(db), "--config", "demo", "--layers", "1", "--random-init",
                          "--no-progress"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"the disk holding {db} is full" in line and "MiB more for its last" in line
    assert "the partial layer1 v2 was dropped; v1 keeps serving" in line
    store = TableStore(db, readonly=True)
    try:
        assert [m.version for m in store.manifests("layer1")] == [1] and store.current_version("layer1") == 1
    finally:
        store.close()
    from memory_service.process import ServiceProcess
    server = ServiceProcess(db, workers=1, log=small_disk.parent / "serve.log")   # the disk is still full
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.target) as channel:
            answer = pb2.LookupResponse.FromString(channel.unary_unary("/engram_memory.v1.MemoryService/Lookup")(
                pb2.LookupRequest(table="layer1", row_ids=np.arange(5, dtype="<i8").tobytes()).SerializeToString(),
                timeout=10))
        assert answer.version == 1 and answer.rows == expected_rows(1)[:5].tobytes()
    finally:
        server.stop()


def test_a_huge_table_name_gets_a_short_refusal(served_store):
    server, _, _ = served_store
    name = "x" * 16384
    with grpc.insecure_channel(server.target) as channel:
        for method, request in (("Lookup", pb2.LookupRequest(table=name, row_ids=b"\0" * 8)),
                                ("DescribeTable", pb2.DescribeTableRequest(table=name))):
            with pytest.raises(grpc.RpcError) as e:
                channel.unary_unary(f"/engram_memory.v1.MemoryService/{method}")(request.SerializeToString(), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, e.value.code())
            assert "(16384 characters)" in e.value.details() and len(e.value.details()) < 300
