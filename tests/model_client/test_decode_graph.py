"""The decode step as DecodeGraph runs it (pieces cut at the Engram layers, rows staged on the host
into static buffers, the device cache's index on the host) against the eager decode loop, on real
text: the same logits bit for bit, local and remote, and the same cache decisions as the eager
prefetcher. On CPU the pieces run eagerly (the graph's logic); on CUDA they are captured graphs."""
import pytest
import torch

from model_client import MemoryClient, NgramHasher
from model_client.demo_model import BackboneConfig, DemoModel
from model_client.prefetcher import Prefetcher
from model_client.remote_backend import RemoteTableBackend
from model_client.service_tier import ServiceTier
from model_client.store_tier import StoreTier
from model_client.tier_stack import TierConfig, build_tiers
from model_client.workload import Runner

from ..conftest import real_text_ids
from ..served import Server, fill_store, tiny_config

CONFIG = tiny_config(row_dtype="bfloat16", hc_mult=2, hidden_size=32)  # Engram layers 1-4
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    db = tmp_path_factory.mktemp("graph") / "db"
    fill_store(db, dtypes={layer: "bfloat16" for layer in CONFIG.layer_ids})
    server = Server(db, workers=1)
    server.wait_serving()
    yield server, db
    server.stop()


def local_model(device):
    torch.manual_seed(0)
    model = DemoModel(BackboneConfig(num_layers=5, hidden_size=32, hc_mult=2, heads=4, max_positions=96), CONFIG)
    with torch.no_grad():
        for block in model.blocks:
            if block.engram is not None:
                block.engram.short_conv.conv.weight.normal_(0, 0.2)  # not the zero init: the conv counts
    return model.to(device).eval()


def remote_prefetcher(served, hasher, tier, device):
    server, db = served
    store = ServiceTier(MemoryClient(server.target)) if tier.startswith("service") else StoreTier(str(db))
    mirrored = CONFIG.layer_ids if tier.endswith("mirror-all") else [1] if tier.endswith("mirror") else []
    mirror = sum(hasher.geometry.rows(layer) for layer in mirrored) * 80 / 2**20
    # 1/64 MiB: 204 rows of 80 B per table, far fewer than the text touches: evictions every step
    tiers = TierConfig(device_cache_mb=1 / 32, host_cache_mb=1 / 16, host_mirror_mb=mirror)
    return Prefetcher(hasher, build_tiers(tiers, store, CONFIG, device, progress=False))


def remote_model(local, prefetcher, device):
    model = DemoModel(local.cfg, CONFIG, {layer: RemoteTableBackend(prefetcher, layer) for layer in CONFIG.layer_ids})
    model.load_state_dict(local.state_dict())
    return model.to(device).eval()


def prompts(tokenizer):
    text = real_text_ids(tokenizer, "en")
    return [text[i * 200:i * 200 + n] for i, n in enumerate([37, 5, 50, 20])]  # 4 rows: a bucket of its own


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tier", ["service", "lmdb", "service+mirror", "service+mirror-all"])
def test_graph_decode_equals_eager_decode(served, ds_tokenizer, device, tier, monkeypatch):
    """service+mirror-all: layer 1 read from the mirror by the device, layers 2-4 staged from it by
    the host (2 blocks of lead here instead of 4)."""
    monkeypatch.setattr("model_client.staged_step.HOST_LEAD_BLOCKS", 2)
    hasher = NgramHasher(CONFIG, ds_tokenizer)
    local = local_model(device)
    local_eager = Runner(local, hasher, pad_id=CONFIG.pad_id, decode_graph=False)
    results = {"local eager": local_eager.run(prompts(ds_tokenizer), decode_steps=6, prefill_batch=2),
               "local graph": Runner(local, hasher, pad_id=CONFIG.pad_id, decode_graph=True).run(
                   prompts(ds_tokenizer), decode_steps=6, prefill_batch=2)}
    for mode in ("eager", "graph"):  # one after the other: a process opens an LMDB environment once
        prefetcher = remote_prefetcher(served, hasher, tier, device)
        try:
            runner = Runner(remote_model(local, prefetcher, device), hasher, prefetcher, pad_id=CONFIG.pad_id,
                            decode_graph=mode == "graph")
            results[f"remote {mode}"] = runner.run(prompts(ds_tokenizer), decode_steps=6, prefill_batch=2)
            # after the run (the graph path handed the index back): what the device cache decided
            results[f"remote {mode}"].stats = (prefetcher.tiers.device_cache.stats(), dict(prefetcher.rows_below_device))
            if mode == "graph":  # a second run reuses the captured graph and the state: other prompts and order
                again = runner.run(prompts(ds_tokenizer)[::-1], decode_steps=3)
        finally:
            prefetcher.close()
    again_want = local_eager.run(prompts(ds_tokenizer)[::-1], decode_steps=3)
    want = results["local eager"]
    assert len(want.logits) == 7
    for name, got in results.items():
        assert all(torch.equal(a, b) for a, b in zip(want.logits, got.logits)), name
        assert torch.equal(want.tokens, got.tokens), name
    assert all(torch.equal(a, b) for a, b in zip(again_want.logits, again.logits))
    assert len(set(want.tokens[:, -1].tolist())) > 1  # the steps decode different text per row
    # the graph path's host index decided exactly what the device cache's own probe and insert did
    (eager, eager_below), (graph, graph_below) = results["remote eager"].stats, results["remote graph"].stats
    if tier.endswith("mirror-all"):
        assert eager_below == graph_below and set(graph_below) == set(CONFIG.layer_ids)  # every row: the mirror
        return
    assert graph.evictions > 0 and graph.hits > 0
    assert (eager.lookups, eager.hits, eager.inserts, eager.evictions, eager.bypassed) == \
           (graph.lookups, graph.hits, graph.inserts, graph.evictions, graph.bypassed)
    assert eager_below == graph_below


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (on CPU a step probes at start: no overlap)")
def test_prefill_groups_started_ahead_make_the_same_cache_decisions(served, ds_tokenizer, monkeypatch):
    """On CUDA the next prefill group's step starts before this group's forward (Runner.run); the
    CacheGates keep each device cache's probes and settles in step order, so the cache decides
    exactly what one group after the other does, and the rows are the local tables' bit for bit."""
    hasher = NgramHasher(CONFIG, ds_tokenizer)
    local = local_model("cuda")
    want = Runner(local, hasher, pad_id=CONFIG.pad_id).run(prompts(ds_tokenizer), decode_steps=2, prefill_batch=1)
    got = {}
    for ahead in (False, True):
        with monkeypatch.context() as m:
            if not ahead:
                m.setattr(Prefetcher, "overlaps", property(lambda self: False))
            prefetcher = remote_prefetcher(served, hasher, "service", "cuda")
            try:
                runner = Runner(remote_model(local, prefetcher, "cuda"), hasher, prefetcher, pad_id=CONFIG.pad_id)
                result = runner.run(prompts(ds_tokenizer), decode_steps=2, prefill_batch=1)  # 4 groups
                got[ahead] = (prefetcher.tiers.device_cache.stats(), dict(prefetcher.rows_below_device))
                assert all(torch.equal(a, b) for a, b in zip(want.logits, result.logits)), f"ahead={ahead}"
            finally:
                prefetcher.close()
    assert got[True][0].evictions > 0
    assert got[True] == got[False]
