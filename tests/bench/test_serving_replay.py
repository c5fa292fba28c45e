"""The hit-rate replay counts what serving counts: the same prompts and decode tokens through the real
Runner, Prefetcher and device cache (a real LMDB store, CPU) and through bench/serving_replay.py give
equal device-cache counters, prefill then decode, under every policy."""
import numpy as np
import pytest
import torch

from bench.serving_replay import ServingReplay
from model_client import NgramHasher
from model_client.demo_model import BackboneConfig, DemoModel
from model_client.prefetcher import Prefetcher
from model_client.remote_backend import RemoteTableBackend
from model_client.store_tier import StoreTier
from model_client.tier_stack import TierConfig, build_tiers
from model_client.workload import Runner

from ..conftest import real_text_ids
from ..served import fill_store, tiny_config

CONFIG = tiny_config(row_dtype="bfloat16", hc_mult=2, hidden_size=32)  # 4 Engram layers, 80 B rows


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    db = tmp_path_factory.mktemp("replay") / "db"
    fill_store(db, dtypes={layer: "bfloat16" for layer in CONFIG.layer_ids})
    return db


@pytest.mark.parametrize("policy", ["lru", "lfu", "lookahead", "tinylfu"])
def test_replay_counts_what_serving_counts(store, ds_tokenizer, policy):
    hasher = NgramHasher(CONFIG, ds_tokenizer)
    text = real_text_ids(ds_tokenizer, "en")
    prompts = np.stack([text[i * 300:i * 300 + 40] for i in range(6)])   # equal lengths: no padding
    tiers = TierConfig(device_cache_mb=1 / 32, policy=policy)           # 409 rows of 80 B per table
    prefetcher = Prefetcher(hasher, build_tiers(tiers, StoreTier(str(store)), CONFIG, "cpu", progress=False))
    try:
        torch.manual_seed(0)
        model = DemoModel(BackboneConfig(num_layers=5, hidden_size=32, hc_mult=2, heads=4, max_positions=64), CONFIG,
                          {layer: RemoteTableBackend(prefetcher, layer) for layer in CONFIG.layer_ids}).eval()
        runner = Runner(model, hasher, prefetcher, pad_id=CONFIG.pad_id, decode_graph=False)
        served = runner.run(list(prompts), decode_steps=0, prefill_batch=2)
        after_prefill = {t: c.stats for t, c in prefetcher.tiers.device_cache.caches.items()}
        served = runner.run(list(prompts), decode_steps=5, prefill_batch=2)
        after_decode = {t: c.stats for t, c in prefetcher.tiers.device_cache.caches.items()}
    finally:
        prefetcher.close()
    replay = ServingReplay(hasher, policy=policy, row_bytes=80, capacity_bytes=TierConfig.bytes(tiers.device_cache_mb))
    replay.prefill(prompts, group=2, admit=len(prompts))
    assert {t: replay.cache(layer).stats for layer, t in replay.tables.items()} == after_prefill
    replay.prefill(prompts, group=2, admit=len(prompts))   # the second run: its prefill, then its decode
    replay.decode(served.tokens.numpy(), context=prompts)
    got = {t: replay.cache(layer).stats for layer, t in replay.tables.items()}
    assert got == after_decode
    assert all(s.hits and s.evictions for s in got.values())
    assert len(replay.result(1).passes) == 3 + 3 + 5
