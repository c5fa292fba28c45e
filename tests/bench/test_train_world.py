"""`bench train-world` trains for real at world sizes 1 and 2 (gloo processes) on the same tokens: the
losses agree, the two-process run spends a measured share of its step exchanging, the one-process run
none; a loss that differs is reported as such."""
from __future__ import annotations

import dataclasses
import json

import pytest

from bench import train_world
from cli.main import main
from tests.trained import TINY, tiny_cfg
from training.trainer import Trainer


def test_world_sizes_one_and_two_train_alike_and_the_exchange_is_timed(tmp_path):
    (tmp_path / "engram.json").write_text(json.dumps(TINY))
    cfg = tiny_cfg(tmp_path)
    out = tmp_path / "result.json"
    argv = ["bench", "train-world", "--out", str(tmp_path / "runs"), "--config", str(tmp_path / "engram.json"),
            "--results", str(out), "--world-sizes", "1", "2", "--device", "cpu", "--no-progress",
            "--corpora", *cfg.corpora, "--doc-lines", str(cfg.doc_lines), "--eval-every", "0", "--eval-batches", "1",
            "--num-layers", "3", "--hidden-size", "32", "--heads", "2", "--max-positions", "32",
            "--seq-len", "32", "--batch", "4", "--steps", "3", "--warmup", "1"]
    assert main(argv) == 0
    row = json.loads(out.read_text())[0]
    one, two = row["runs"]
    assert (one["world_size"], two["world_size"]) == (1, 2) and row["global_batch"] == 4
    assert two["losses_match"] and 0 <= two["max_loss_rel_diff"] <= train_world.LOSS_RTOL
    assert two["first_loss"] != two["last_loss"]  # it trained
    assert one["exchange_share"] == 0 and set(one["exchange_s_median"].values()) == {0.0}
    assert 0 < two["exchange_share"] < 1
    assert all(two["exchange_s_median"][k] > 0 for k in ("rows", "row_grads", "dense_grads"))
    assert set(one["exchange_bytes_median"].values()) == {0}
    # the dense all-reduce: 2 (W - 1) / W of every gradient, 4 B a parameter; at W = 2, all of them
    parameters = sum(p.numel() for p in Trainer(tiny_cfg(tmp_path)).model.parameters())
    assert two["exchange_bytes_median"]["dense_grads"] == 4 * parameters
    assert two["exchange_bytes_median"]["rows"] > 0 and two["exchange_bytes_median"]["row_grads"] > 0
    for world in (1, 2):  # each run's own metrics and checkpoint stay
        metrics = json.loads((tmp_path / "runs" / f"world{world}" / "metrics.json").read_text())
        assert metrics["world_size"] == world and metrics["timed_steps"] == 2
        assert (tmp_path / "runs" / f"world{world}" / "model.safetensors.index.json").is_file()


def test_a_loss_that_differs_is_flagged():
    metrics = {"batch": 4, "seq_len": 32, "device": "cpu", "steps": 2, "step_s_median": 1.0, "exchange_share": 0.0,
               "exchange_s_median": dict.fromkeys(("rows", "row_grads", "dense_grads"), 0.0), "val_loss": 5.0,
               "exchange_bytes_median": dict.fromkeys(("rows", "row_grads", "dense_grads"), 0),
               "history": {"train": [[1, 6.0], [2, 5.5]]}}
    drifted = {**metrics, "step_s_median": 0.6, "history": {"train": [[1, 6.0], [2, 5.5 * (1 + 1e-4)]]}}
    row = train_world.compare({1: metrics, 2: drifted})
    assert [r["losses_match"] for r in row["runs"]] == [True, False]
    assert abs(row["runs"][1]["max_loss_rel_diff"] - 1e-4) < 1e-9 and row["runs"][1]["step_time_ratio"] == 0.6
    assert "> tolerance" in train_world.report(row)


def test_a_batch_that_does_not_split_is_refused_naming_the_flag():
    with pytest.raises(ValueError, match="--world-sizes"):
        dataclasses.replace(train_world.TrainWorldBenchConfig(batch=6), world_sizes=[1, 4])
