"""MemoryClient against a real server: dedup, config checks, service down and back."""
import threading
import time

import numpy as np
import pytest

from core.tokenizer import get_compressed_tokenizer
from model_client import EngramConfig, MemoryClient, MemoryServiceError
from model_client.memory_client import deduplicate

from ..served import Server, expected_rows, fill_store, free_port, tiny_config


def test_deduplicate_matches_numpy():
    for n in (1, 2, 17, 5000):
        ids = np.random.default_rng(n).integers(0, max(2, n // 3), n)
        unique, inverse = deduplicate(ids)
        expect, expect_inverse = np.unique(ids, return_inverse=True)
        np.testing.assert_array_equal(unique, expect)
        np.testing.assert_array_equal(inverse, expect_inverse)


def test_duplicates_are_sent_once(served_store):
    server, _, _ = served_store
    with MemoryClient(server.target, channels=1) as client:
        before = sum(s.rows for s in client.stats())
        ids = np.repeat(np.arange(100), 50)  # 5,000 ids, 100 distinct
        np.testing.assert_array_equal(client.lookup("layer1", ids), expected_rows(1)[ids])
        assert sum(s.rows for s in client.stats()) - before == 100


def test_check_refuses_a_table_built_for_another_config(served_store):
    server, _, _ = served_store
    with MemoryClient(server.target) as client:
        client.describe("layer1").check_compatible(tiny_config(), get_compressed_tokenizer("deepseek-v3").sha256, 98_627)
        # this store keeps each layer in another dtype, so one config cannot match every table
        with pytest.raises(ValueError, match="layer2 v1 was built with row_dtype='bfloat16'"):
            client.check(tiny_config(), get_compressed_tokenizer("deepseek-v3").sha256, 98_627)
        with pytest.raises(ValueError, match="built with seed=0, but this model's EngramConfig has seed=5"):
            client.check(tiny_config(seed=5))
        with pytest.raises(ValueError, match="tokenizer sha256"):
            client.check(tiny_config(), "f" * 64)
        with pytest.raises(ValueError, match=r"built with engram_vocab_size=\[3000, 3000\]"):
            client.check(EngramConfig())
        with pytest.raises(MemoryServiceError, match="NOT_FOUND.*layer15"):
            client.describe("layer15")


def test_service_down_is_a_clear_error_and_the_client_recovers(tmp_path):
    db = tmp_path / "db"
    fill_store(db)
    port = free_port()
    server = Server(db, "--port", str(port), workers=1)
    server.wait_serving()
    ids = np.arange(0, 3000, 3)
    with MemoryClient(f"127.0.0.1:{port}", channels=2, timeout_s=2.0, retries=3) as client:
        np.testing.assert_array_equal(client.lookup("layer2", ids), expected_rows(2)[ids])
        assert server.stop() == 0
        started = time.monotonic()
        with pytest.raises(MemoryServiceError, match="UNAVAILABLE") as e:
            client.lookup("layer2", ids)
        assert "table layer2" in str(e.value) and time.monotonic() - started < 10
        restarted = {}
        threading.Thread(target=lambda: restarted.setdefault("s", Server(db, "--port", str(port), workers=1))).start()
        deadline = time.monotonic() + 60
        while True:  # the same client, retrying: it must come back with the right rows, never zeros
            try:
                rows = client.lookup("layer2", ids)
                break
            except MemoryServiceError as err:
                assert err.code.name == "UNAVAILABLE"
                assert time.monotonic() < deadline, "the client never recovered"
        np.testing.assert_array_equal(rows, expected_rows(2)[ids])
    restarted["s"].stop()


def test_nothing_listening_fails_within_the_deadline():
    with MemoryClient(f"127.0.0.1:{free_port()}", timeout_s=1.0, retries=2) as client:
        started = time.monotonic()
        with pytest.raises(MemoryServiceError, match="UNAVAILABLE"):
            client.lookup("layer1", [1])
        assert time.monotonic() - started < 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="channels must be >= 1"):
        MemoryClient("127.0.0.1:1", channels=0)
    with pytest.raises(ValueError, match="max_rows_per_request"):
        MemoryClient("127.0.0.1:1", max_rows_per_request=0)


def test_lookup_into_the_callers_buffer(served_store):
    server, _, manifests = served_store
    expect = expected_rows(3)
    with MemoryClient(server.target, channels=3, request_bytes=1000 * 80) as client:  # 1,000-row requests
        for ids in (np.arange(0, 7000, 2), np.random.default_rng(0).integers(0, 11_000, 7000)):
            out = np.full((len(ids), 80), 7, dtype=np.uint8)
            assert client.lookup("layer3", ids, out=out) is out
            np.testing.assert_array_equal(out, expect[ids])
        with pytest.raises(ValueError, match=r"out must be a C-contiguous uint8 array of shape \[3, 80\]"):
            client.lookup("layer3", [1, 2, 3], out=np.zeros((3, 81), np.uint8))


def test_idle_streams_give_their_server_thread_back(served_store):
    server, _, _ = served_store
    with MemoryClient(server.target, channels=2, stream_idle_s=0.2, request_bytes=100 * 160) as client:
        client.lookup("layer1", np.arange(0, 5000, 2))       # several requests: both streams open
        assert all(s._call is not None for s in client._streams)
        time.sleep(1.5)
        assert all(s._call is None for s in client._streams)  # closed by the janitor
        np.testing.assert_array_equal(client.lookup("layer1", [3, 4]), expected_rows(1)[[3, 4]])
