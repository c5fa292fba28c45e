"""Rows through the client's own segment (same host) equal rows through the transport; a server that
cannot or may not use it makes the client fall back; segments leave nothing behind. Attacks on the
segments are in test_attack_segments.py."""
import os

import numpy as np
import pytest

from model_client import MemoryClient

from ..served import DTYPE_LAYERS, Server, expected_rows, fill_store

LAYER = next(iter(DTYPE_LAYERS))


def memfds(pid: int | str = "self") -> int:
    """memfd segments this process holds open (distinct files: the mapping holds a second fd)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:engram-rows"):
                inodes.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
        except OSError:
            pass
    return len(inodes)


def server_maps(server) -> int:
    """Segments mapped by the server's worker processes (their /proc/PID/maps)."""
    import subprocess
    pids = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
    return sum(open(f"/proc/{p}/maps").read().count("/memfd:engram-rows") for p in pids)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("shm") / "db"
    fill_store(path)
    return path


def test_segment_rows_equal_transport_rows_and_nothing_is_left(store_path):
    import time
    expect = expected_rows(LAYER)
    ids = np.random.default_rng(0).integers(0, len(expect), 20_000)
    ids[::7] = ids[3]                                                   # duplicates
    server = Server(store_path, workers=2)
    try:
        server.wait_serving()
        before = set(os.listdir("/dev/shm"))
        with MemoryClient(server.target, request_bytes=64 << 10) as shm, \
                MemoryClient(server.target, shared_memory=False) as plain:
            assert shm._arena is not None and plain._arena is None        # loopback: on by default
            for _ in range(3):                                          # several pieces, reused segment
                got = shm.lookup(f"layer{LAYER}", ids)
                assert np.array_equal(got, expect[ids])
            assert np.array_equal(plain.lookup(f"layer{LAYER}", ids), got)
            segment = shm._arena.segment(0)
            assert len(segment.ids) == len(shm._pool) and memfds() == 1     # one segment, every channel
            assert server_maps(server) >= 1
        assert memfds() == 0
        assert set(os.listdir("/dev/shm")) == before                    # nothing named, nothing left
        deadline = time.monotonic() + 5                                 # the tether closed: unmapped
        while server_maps(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server_maps(server) == 0
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


def test_a_segment_that_cannot_be_reserved_fails_cleanly(monkeypatch):
    """No memory for the segment: ENOSPC at creation (never a SIGBUS at the first write)."""
    import errno

    from model_client.shared_arena import SharedArena

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    arena = SharedArena()
    with pytest.raises(OSError):
        arena.segment(1 << 20)
    assert memfds() == 0


def test_a_restarted_server_process_gets_the_segment_again(store_path):
    """A segment id is valid only on the connection that registered it: after the server restarts,
    the client registers a fresh segment and the lookup still returns the right rows."""
    expect = expected_rows(LAYER)
    server = Server(store_path, workers=1)
    port = server.port
    try:
        server.wait_serving()
        with MemoryClient(server.target, shared_memory=True, timeout_s=20, request_bytes=16 << 10) as client:
            ids = np.arange(0, len(expect), 13)                         # pieces on every channel
            assert np.array_equal(client.lookup(f"layer{LAYER}", ids), expect[ids])
            first = client._arena.segment(0)
            server.kill()
            server = Server(store_path, "--port", str(port), workers=1)
            server.wait_serving()
            assert np.array_equal(client.lookup(f"layer{LAYER}", ids), expect[ids])
            assert client._arena is not None and client._arena.segment(0) is not first
    finally:
        server.stop()
