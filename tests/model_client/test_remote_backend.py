"""The Engram module over remote tables (service and co-located LMDB) equals the local module bit
for bit, in ragged chunked prefill and in step-by-step decode, on real text."""
import numpy as np
import pytest
import torch

import kernels
from model_client import Engram, MemoryClient, MemoryServiceError, NgramHasher
from model_client.prefetcher import Prefetcher
from model_client.remote_backend import RemoteTableBackend
from model_client.service_tier import ServiceTier
from model_client.store_tier import StoreTier
from model_client.tier_stack import TierConfig, build_tiers

from ..conftest import real_text_ids
from ..kernels import INTERPRETED
from ..served import Server, fill_store, tiny_config

CONFIG = tiny_config(row_dtype="bfloat16", hc_mult=2, hidden_size=32)


@pytest.fixture(scope="module")
def bf16_server(tmp_path_factory):
    db = tmp_path_factory.mktemp("bf16") / "db"
    fill_store(db, dtypes={layer: "bfloat16" for layer in CONFIG.layer_ids})
    server = Server(db, workers=1)
    server.wait_serving()
    yield server, db
    server.stop()


def modules(prefetcher, device="cpu"):
    torch.manual_seed(0)
    local, remote = {}, {}
    for layer in CONFIG.layer_ids:
        local[layer] = Engram(CONFIG, layer)                       # the seeded table, in memory
        with torch.no_grad():
            for p in local[layer].parameters():
                p.normal_(0, 0.2)                                  # conv weights too: not zero
        remote[layer] = Engram(CONFIG, layer, backend=RemoteTableBackend(prefetcher, layer))
        remote[layer].load_state_dict(local[layer].state_dict())
        local[layer].to(device)
        remote[layer].to(device)
    return local, remote


@pytest.mark.parametrize("tier,device", [
    ("service", "cpu"), ("lmdb", "cpu"), ("service+mirror", "cpu"),
    # every Triton kernel in the loop (hashing, cache probe/insert, gather, gate), interpreted on CPU
    pytest.param("service", "cpu-triton", marks=pytest.mark.skipif(not INTERPRETED, reason="needs triton")),
    pytest.param("service", "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
    pytest.param("service+mirror", "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))])
def test_remote_equals_local_bit_for_bit(bf16_server, ds_tokenizer, tier, device):
    with kernels.backend("triton" if device == "cpu-triton" else kernels.get_backend()):
        remote_equals_local(bf16_server, ds_tokenizer, tier, device.replace("-triton", ""))


def remote_equals_local(bf16_server, ds_tokenizer, tier, device):
    server, db = bf16_server
    hasher = NgramHasher(CONFIG, ds_tokenizer)
    store = ServiceTier(MemoryClient(server.target)) if tier.startswith("service") else StoreTier(str(db))
    # +mirror: the first Engram layer's whole table in host memory (one table's bytes), the rest remote
    first = CONFIG.layer_ids[0]
    mirror_bytes = hasher.geometry.rows(first) * store.describe(f"layer{first}").row_bytes if tier.endswith("mirror") else 0
    tiers = TierConfig(device_cache_mb=1 / 16, host_cache_mb=1 / 8, host_mirror_mb=mirror_bytes / 2**20)
    prefetcher = Prefetcher(hasher, build_tiers(tiers, store, CONFIG, device, progress=False))
    if mirror_bytes:  # prefill chunks (256 rows a layer) through the cache, decode steps (16) direct
        assert list(prefetcher.tiers.host_mirror.data) == [f"layer{first}"]
        prefetcher.direct_rows = 64
    local, remote = modules(prefetcher, device)
    text = real_text_ids(ds_tokenizer, "en")
    lengths = [37, 5, 64, 20]
    B, chunk, M, D = len(lengths), 16, CONFIG.hc_mult, CONFIG.hidden_size
    prompts = [text[i * 100:i * 100 + n] for i, n in enumerate(lengths)]
    rng = torch.Generator().manual_seed(1)
    state_l, state_r = hasher.new_state(B, device=device), hasher.new_state(B, device=device)
    conv_l = {layer: local[layer].new_conv_state(B) for layer in CONFIG.layer_ids}
    conv_r = {layer: remote[layer].new_conv_state(B) for layer in CONFIG.layer_ids}
    compared = 0
    with torch.no_grad():
        for start in range(0, max(lengths), chunk):           # ragged chunked prefill
            x = np.zeros((B, chunk), dtype=np.int64)
            n = np.clip(np.array(lengths) - start, 0, chunk)
            for b, p in enumerate(prompts):
                x[b, :n[b]] = p[start:start + n[b]]
            ids, n = torch.from_numpy(x).to(device), torch.from_numpy(n).to(device)
            hidden = torch.randn(B, chunk, M, D, generator=rng).to(device)
            local_hash = hasher.hash(ids, state=state_l, lengths=n)
            step = prefetcher.start(ids, state_r, n)
            for layer in CONFIG.layer_ids:
                y_local = local[layer](hidden, torch.as_tensor(local_hash[layer]), conv_l[layer], n)
                y_remote = remote[layer](hidden, step.hash_ids(layer), conv_r[layer], n, step=step)
                for b in range(B):  # positions past a row's length are padding
                    assert torch.equal(y_local[b, :n[b]], y_remote[b, :n[b]])
                    compared += int(n[b])
        for t in range(8):                                     # then decode, one token a step
            ids = torch.from_numpy(text[1000 + t * B:1000 + (t + 1) * B].reshape(B, 1)).to(device)
            hidden = torch.randn(B, 1, M, D, generator=rng).to(device)
            local_hash = hasher.hash(ids, state=state_l)
            step = prefetcher.start(ids, state_r)
            for layer in CONFIG.layer_ids:
                assert torch.equal(local[layer](hidden, torch.as_tensor(local_hash[layer]), conv_l[layer]),
                                   remote[layer](hidden, step.hash_ids(layer), conv_r[layer], step=step))
    assert compared == sum(lengths) * len(CONFIG.layer_ids)
    device = prefetcher.tiers.device_cache.stats()
    assert device.hits > 0 and device.misses > 0                # real traffic through the caches
    assert sum(len(w) for w in prefetcher.exposed_wait_s.values()) == (4 + 8) * len(CONFIG.layer_ids)
    if mirror_bytes:                                           # the first layer's misses came from the mirror
        assert prefetcher.tiers.host_mirror.rows_served == prefetcher.rows_below_device[first] > 0
    prefetcher.close()


def test_misuse_and_failures_are_clear_errors(tmp_path, ds_tokenizer):
    db = tmp_path / "db"
    fill_store(db, dtypes={layer: "bfloat16" for layer in CONFIG.layer_ids})
    server = Server(db, workers=1)
    server.wait_serving()
    hasher = NgramHasher(CONFIG, ds_tokenizer)
    client = MemoryClient(server.target, timeout_s=2.0, retries=2)
    prefetcher = Prefetcher(hasher, build_tiers(TierConfig(device_cache_mb=1 / 16), ServiceTier(client), CONFIG))
    local, remote = modules(prefetcher)
    ids = torch.from_numpy(real_text_ids(ds_tokenizer, "en")[:40].reshape(2, 20))
    hidden = torch.randn(2, 20, CONFIG.hc_mult, CONFIG.hidden_size)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="its table is remote; pass the forward pass's step"):
            remote[1](hidden, torch.as_tensor(hasher.hash(ids)[1]))
        step = prefetcher.start(ids)
        with pytest.raises(RuntimeError, match="asked for other rows than the step prefetched"):
            remote[1](hidden, torch.as_tensor(hasher.hash(ids)[1]) + 1, step=step)
        equal = torch.as_tensor(hasher.hash(ids)[1])          # equal ids, another tensor: compared, served
        assert remote[1](hidden, equal, step=step).shape == hidden.shape
        with pytest.raises(RuntimeError, match="rows were read already"):
            remote[1](hidden, step.hash_ids(1), step=step)
        step.wait_all()
        server.stop()                                          # the service goes away
        step = prefetcher.start(ids)
        with pytest.raises(MemoryServiceError, match="UNAVAILABLE"):
            remote[1](hidden, step.hash_ids(1), step=step)     # an error, never zero rows
    with pytest.raises(ValueError, match="built with seed=0, but this model's EngramConfig has seed=3"):
        other = CONFIG.replace(seed=3)
        RemoteTableBackend(Prefetcher(NgramHasher(other, ds_tokenizer), build_tiers(TierConfig(), StoreTier(str(db)), other)), 1)
