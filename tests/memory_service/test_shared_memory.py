"""Rows through the client's shared-memory segment (same host) equal rows through the transport;
a server that cannot or may not write there makes the client fall back; bad segment requests get
clear statuses and the server keeps serving."""
import os

import grpc
import numpy as np
import pytest

from model_client import MemoryClient
from model_client.shared_arena import SHM_DIR
from protos import pb2, pb2_grpc

from ..served import DTYPE_LAYERS, Server, expected_rows, fill_store

LAYER = next(iter(DTYPE_LAYERS))


def our_segments() -> set[str]:
    return {n for n in os.listdir(SHM_DIR) if n.startswith(f"engram-{os.getpid()}-")}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("shm") / "db"
    fill_store(path)
    return path


def test_shared_memory_rows_equal_transport_rows(store_path):
    expect = expected_rows(LAYER)
    ids = np.random.default_rng(0).integers(0, len(expect), 20_000)
    ids[::7] = ids[3]                                                   # duplicates
    server = Server(store_path, workers=2)
    try:
        server.wait_serving()
        before = our_segments()
        with MemoryClient(server.target, request_bytes=64 << 10) as shm, \
                MemoryClient(server.target, shared_memory=False) as plain:
            assert shm._arena is not None and plain._arena is None        # loopback: on by default
            for _ in range(3):                                          # several pieces, reused segment
                got = shm.lookup(f"layer{LAYER}", ids)
                assert np.array_equal(got, expect[ids])
            assert np.array_equal(plain.lookup(f"layer{LAYER}", ids), got)
            assert len(our_segments() - before) == 1
        assert our_segments() == before                                 # unlinked on close
    finally:
        server.stop()


def test_server_without_shared_memory_makes_the_client_fall_back(store_path):
    expect = expected_rows(LAYER)
    server = Server(store_path, "--no-shared-memory", workers=1)
    try:
        server.wait_serving()
        with MemoryClient(server.target, shared_memory=True) as client:
            ids = np.arange(0, len(expect), 97)
            assert np.array_equal(client.lookup(f"layer{LAYER}", ids), expect[ids])
            assert client._arena is None                                # asked once, then the transport
            assert np.array_equal(client.lookup(f"layer{LAYER}", ids), expect[ids])
    finally:
        server.stop()


def test_bad_segment_requests_are_refused_clearly(store_path, tmp_path):
    server = Server(store_path, workers=1)
    try:
        server.wait_serving()
        stub = pb2_grpc.MemoryServiceStub(grpc.insecure_channel(server.target))
        ids = np.arange(10, dtype="<i8").tobytes()
        name = f"engram-{os.getpid()}-test"
        with open(os.path.join(SHM_DIR, name), "wb") as f:
            f.write(b"\0" * 100)
        try:
            cases = [("../../etc/passwd", 0, grpc.StatusCode.INVALID_ARGUMENT, "shm_name"),
                     ("engram-does-not-exist", 0, grpc.StatusCode.FAILED_PRECONDITION, "cannot be opened"),
                     (name, 64, grpc.StatusCode.INVALID_ARGUMENT, "shm_offset 64")]
            for shm_name, offset, code, words in cases:
                with pytest.raises(grpc.RpcError) as err:
                    stub.Lookup(pb2.LookupRequest(table=f"layer{LAYER}", row_ids=ids, shm_name=shm_name,
                                                  shm_offset=offset), timeout=10)
                assert err.value.code() == code and words in err.value.details()
        finally:
            os.unlink(os.path.join(SHM_DIR, name))
        answer = stub.Lookup(pb2.LookupRequest(table=f"layer{LAYER}", row_ids=ids), timeout=10)
        assert answer.num_rows == 10 and not answer.rows_in_shm          # still serving
    finally:
        server.stop()


def test_a_segment_that_does_not_fit_fails_cleanly(monkeypatch):
    """No space in /dev/shm: ENOSPC at creation (never a SIGBUS at the first write), nothing left."""
    import errno
    from model_client.shared_arena import SharedArena

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    before = our_segments()
    arena = SharedArena()
    with pytest.raises(OSError):
        arena.buffer(1 << 20)
    assert our_segments() == before


def test_segments_of_dead_clients_are_reaped():
    import subprocess
    import sys
    from model_client.shared_arena import SharedArena
    code = ("import os; from model_client.shared_arena import SharedArena; a = SharedArena(); "
            "name, _ = a.buffer(1 << 20); print(name, flush=True); os._exit(0)")   # dies without cleanup
    name = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert os.path.exists(os.path.join(SHM_DIR, name))
    SharedArena().close()
    assert not os.path.exists(os.path.join(SHM_DIR, name))


def test_no_room_for_a_new_segment_after_a_failure_falls_back(store_path, monkeypatch):
    """A failed call retires the segment; with /dev/shm full (containers get 64 MiB) the client
    goes on over the transport instead of failing (found by the sharded compose smoke test)."""
    import errno
    from model_client import MemoryServiceError
    expect = expected_rows(LAYER)
    server = Server(store_path, workers=1)
    try:
        server.wait_serving()
        with MemoryClient(server.target, shared_memory=True, retries=0) as client:
            ids = np.arange(0, len(expect), 11)
            assert np.array_equal(client.lookup(f"layer{LAYER}", ids), expect[ids])
            with pytest.raises(ValueError):
                client.lookup(f"layer{LAYER}", [len(expect)])           # refused before sending

            def full(fd, offset, length):
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(os, "posix_fallocate", full)
            client._rotate()
            assert client._arena is None
            assert np.array_equal(client.lookup(f"layer{LAYER}", ids), expect[ids])
    finally:
        server.stop()
