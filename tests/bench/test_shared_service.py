"""`bench workers`: one real memory service, one and then two worker processes reading through it at
once, every output bit-compared with local tables; a service holding other rows is caught, and a
worker that fails takes the bench down instead of leaving the other at the barrier."""
from __future__ import annotations

import json

import pytest

from cli.main import main
from core.store import TableStore
from core.tokenizer import get_compressed_tokenizer
from memory_service.checkpoint import RandomRows
from memory_service.loader import load_layer

from ..served import Server, fill_store, tiny_config


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(tiny_config(layer_ids=[1, 2]).to_json())
    return str(path)


def argv(tmp_path, config, *extra):
    return ["bench", "workers", "--config", config, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "w.json"),
            "--num-layers", "3", "--hidden-size", "32", "--heads", "4", "--repeats", "2", "--sequences", "3",
            "--min-len", "20", "--max-len", "60", "--decode-steps", "3", "--device-cache-mb", "1", "--device", "cpu",
            *extra]


def test_one_then_two_workers_share_one_service_and_match_local_tables(tmp_path, tiny_json):
    assert main(argv(tmp_path, tiny_json, "--worker-counts", "1", "2")) == 0
    result = json.loads((tmp_path / "w.json").read_text())[0]
    one, two = result["rows"]
    assert (one["workers"], two["workers"]) == (1, 2) and result["gpus_visible"] == 0
    assert one["outputs_match"] and two["outputs_match"]
    for phase in ("prefill", "decode"):
        assert len(two[f"{phase}_ratio_remote_to_local_by_worker"]) == 2
        assert all(r > 0 for r in two[f"{phase}_remote_tokens_per_s_by_worker"])
        # the aggregate is the sum of the two workers' rates in runs that started together
        assert two[f"{phase}_remote_aggregate_tokens_per_s"] > max(two[f"{phase}_remote_tokens_per_s_by_worker"]) / 2
        assert two[f"{phase}_scaling"] == pytest.approx(two[f"{phase}_remote_aggregate_tokens_per_s"]
                                                        / one[f"{phase}_remote_aggregate_tokens_per_s"])


def test_a_shared_service_with_other_rows_is_caught(tmp_path, tiny_json):
    config = tiny_config(layer_ids=[1, 2], row_dtype="bfloat16")
    store = TableStore(tmp_path / "other")
    tokenizer = get_compressed_tokenizer("deepseek-v3")
    try:  # the same tables, but the seeded rows of seed 1, not the local tables' seed 0
        for layer in config.layer_ids:
            load_layer(store, config, layer, RandomRows(1, layer, config.head_dim), tokenizer.sha256,
                       tokenizer.num_compressed, progress=False)
    finally:
        store.close()
    with Server(tmp_path / "other") as server:
        server.wait_serving()
        assert main(argv(tmp_path, tiny_json, "--worker-counts", "2", "--service", server.target)) == 1
    assert not json.loads((tmp_path / "w.json").read_text())[0]["rows"][0]["outputs_match"]


def test_a_failing_worker_ends_the_bench_naming_it(tmp_path, tiny_json, capfd):
    fill_store(tmp_path / "other-config")  # tables of another EngramConfig: each worker refuses them
    with Server(tmp_path / "other-config") as server:
        server.wait_serving()
        assert main(argv(tmp_path, tiny_json, "--worker-counts", "2", "--service", server.target)) == 2
    err = capfd.readouterr().err  # the workers are processes of their own: their stderr is the fd
    assert "its rows would be wrong for this model" in err
    assert "of 2 failed" in err and "the other workers were stopped" in err
