"""Limits that hold under abuse, and failures that stay with their request: idle or never-read
streams from a second process cannot starve new calls; many legitimate clients lose no call; one
thread's bad request on a shared client fails no other thread's lookups."""
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from bench.load import LoadBenchConfig, build_table, measure
from model_client import MemoryClient, MemoryServiceError

from ..served import Server, expected_rows, fill_store
from .test_attack_segments import ROOT, no_worker_died

LAYER, TABLE = 2, "layer2"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("attack-streams") / "db"
    fill_store(path, dtypes={LAYER: "bfloat16"})
    server = Server(path, "--threads", "32", workers=2)                 # 24 streams per process at most
    server.wait_serving()
    yield server
    server.stop()


def new_calls_succeed(target, seconds: float) -> list:
    """Fresh clients (unary and streams) for `seconds`: every error they hit."""
    errors, ids = [], np.arange(0, 3000, 3)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with MemoryClient(target, channels=2, timeout_s=5, shared_memory=False) as client:
            try:
                assert np.array_equal(client.lookup(TABLE, ids), expected_rows(LAYER)[ids])
                client.describe(TABLE, refresh=True)
            except MemoryServiceError as e:
                errors.append(str(e))
    return errors


@pytest.mark.parametrize("slow", [False, True], ids=["idle", "never-read"])
def test_idle_and_slow_streams_cannot_starve_new_calls(server, slow):
    import json
    args = dict(target=server.target, table=TABLE, connections=16, streams=256, seconds=6, slow=slow, rows=20_000)
    attacker = subprocess.Popen([sys.executable, "-m", "tests.attacker", "idle_streams", json.dumps(args)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)                                                 # its 256 streams are open
        assert new_calls_succeed(server.target, 3.0) == []
        out, err = attacker.communicate(timeout=60)
    finally:
        attacker.kill()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["streams"] == 256
    assert report["ended"].get("open", 0) < 256                         # the server turned most away
    no_worker_died(server)


def test_many_clients_lose_no_call(tmp_path):
    """The load that lost 29% of its calls (48 clients x 4 channels, issue 13), shorter."""
    from memory_service.process import ServiceProcess
    db, expect = build_table(str(tmp_path))
    service = ServiceProcess(db, workers=2)
    try:
        service.wait_serving()
        result = measure(service.target, "layer1", LoadBenchConfig(clients=48, channels=4, processes=4,
                                                                   batch_rows=2048, duration_s=4), expect)
    finally:
        service.stop()
    assert result["calls"] > 48 and result["lost"] == 0 and result["wrong_rows"] == 0, result["errors"]


def test_one_threads_bad_request_fails_no_other_thread(server):
    expect = expected_rows(LAYER)
    failures, bad_answers, stop = [], [], threading.Event()
    with MemoryClient(server.target, channels=2, shared_memory=True) as shared:
        def good(seed):
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                ids = rng.integers(0, len(expect), 3000)
                try:
                    assert np.array_equal(shared.lookup(TABLE, ids), expect[ids])
                except MemoryServiceError as e:
                    failures.append(str(e))

        # a version the client described before it was dropped: its lookups reach the server's
        # streams, which answer NOT_FOUND for that request alone (it once aborted the shared stream)
        import dataclasses
        shared._manifests[(TABLE, 7)] = dataclasses.replace(shared.describe(TABLE), version=7)

        def bad():
            while not stop.is_set():
                try:
                    shared.lookup(TABLE, np.arange(0, 3000, 2), version=7)
                except MemoryServiceError as e:
                    bad_answers.append(e.code.name)
        threads = [threading.Thread(target=good, args=(i,)) for i in range(6)] + [threading.Thread(target=bad)]
        for t in threads:
            t.start()
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join()
    assert len(bad_answers) > 20 and set(bad_answers) == {"NOT_FOUND"} and failures == []
