"""The main job end to end, small: tables created in a store, the memory service started, the demo
model run with local and with remote tables, outputs compared."""
import dataclasses
import subprocess

import pytest

from bench.comparison import ComparisonConfig, _phase_waits, run_comparison
from bench.comparison_report import report
from memory_service.process import executable
from model_client.tier_stack import TierConfig
from model_client.workload import WorkloadConfig

from ..served import tiny_config


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(tiny_config(layer_ids=[1, 2]).to_json())
    return str(path)


def worker(tmp_path, config, host_mirror_mb=0, **changes):
    base = ComparisonConfig(config=config, data_dir=str(tmp_path), num_layers=3, hidden_size=32, heads=4, repeats=2,
                            workload=WorkloadConfig(sequences=3, min_len=20, max_len=60, decode_steps=4),
                            tiers=TierConfig(device_cache_mb=1, host_cache_mb=1, host_mirror_mb=host_mirror_mb))
    return dataclasses.replace(base, **changes)


def test_phase_waits_split_prefill_groups_from_decode_steps():
    class Waits:  # two prefill groups, then three decode steps, after one earlier run's two waits
        exposed_wait_s = {1: [9.0, 9.0, 1.0, 2.0, 0.5, 0.25, 0.125], 15: [9.0, 9.0, 4.0, 0.0, 1.0, 0.0, 0.0]}
    assert _phase_waits(Waits, {1: 2, 15: 2}, prefill_steps=2) == {1: (3.0, 0.875), 15: (4.0, 1.0)}


@pytest.mark.parametrize("colocated,mirror", [(False, 0), (True, 0), (False, 1)])
def test_remote_and_local_runs_match(tmp_path, tiny_json, colocated, mirror):
    out = run_comparison(worker(tmp_path, tiny_json, colocated=colocated, prefill_batch=2, host_mirror_mb=mirror),
                         log=lambda *_: None)
    if mirror:  # 1 MiB holds layer 1's table (~12,000 rows of 160 B), not layer 2's as well
        assert out["host_mirror_tables"] == ["layer1"] and out["rows_from_host_mirror"] > 0
    assert out["outputs_match"] is True
    assert out["prefill_tokens"] > 0 and out["decode_tokens"] == 3 * 4
    for key in ("prefill_ratio_remote_to_local", "decode_ratio_remote_to_local", "prefill_exposed_wait_share",
                "device_cache_hit_rate", "host_cache_hit_rate"):
        assert 0 <= out[key] < 10, key
    assert out["rows_from_store"] > 0
    assert "match bit for bit: YES" in report(out)


def test_demo_command_runs_end_to_end(tmp_path, tiny_json):
    args = [executable(), "demo", "--config", tiny_json, "--max-chars", "5000", "--data-dir", str(tmp_path),
            "--num-layers", "3", "--hidden-size", "32", "--heads", "4", "--sequences", "2", "--max-len", "40",
            "--min-len", "10", "--decode-steps", "2", "--repeats", "1"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "outputs of local and remote tables match bit for bit: YES" in done.stdout
    assert "RANDOM weights" in done.stdout and "exposed wait" in done.stdout
    bad = subprocess.run([executable(), "demo", "--no-e2e", "--policy", "fifo"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--policy must be one of" in bad.stderr


def test_lookahead_policy_beats_lru_and_keeps_outputs_exact(tmp_path, tiny_json):
    """With the prompts of a batch announced, the device cache keeps what later prefill groups
    need: more hits than LRU at the same (small) size, outputs still bit-identical."""
    rates = {}
    for policy in ("lru", "lookahead"):
        out = run_comparison(worker(tmp_path, tiny_json, prefill_batch=1, repeats=1,
                                    tiers=TierConfig(device_cache_mb=1, policy=policy),
                                    workload=WorkloadConfig(sequences=8, min_len=500, max_len=500, decode_steps=1)),
                             log=lambda *_: None)
        assert out["outputs_match"] is True
        rates[policy] = out["device_cache_hit_rate"]
    assert rates["lookahead"] > rates["lru"], rates


def test_a_trained_checkpoint_is_served_and_generates_the_same_text(tmp_path, ds_tokenizer):
    """demo --checkpoint: the checkpoint's rows in a store of their own, served; the trained model
    run with them local and remote, bit-identical, its greedy text reported; prompts cut to fit the
    checkpoint's 32 positions."""
    from ..trained import trained_checkpoint
    index = trained_checkpoint(tmp_path, ds_tokenizer)
    cfg = worker(tmp_path, "", checkpoint=str(index), repeats=1,
                 workload=WorkloadConfig(sequences=3, min_len=10, max_len=60, decode_steps=4))
    out = run_comparison(cfg, log=lambda *_: None)
    assert out["outputs_match"] is True and out["max_len"] == 32 - 4 - 1
    assert "trained-" in out["table_store"] and out["rows_from_store"] > 0
    assert len(out["samples"]) == 3 and all(s["continuation"] for s in out["samples"])
    text = report(out)
    assert f"trained weights from {index}" in text and "generated through the memory service" in text
    again = run_comparison(cfg, log=lambda *_: None)  # the store is reused, the text the same
    assert again["table_store"] == out["table_store"] and again["samples"] == out["samples"]
