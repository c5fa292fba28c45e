import numpy as np
import pytest
import torch

from model_client import EngramConfig, NgramHasher
from model_client.demo_model import BackboneConfig, DemoModel

from ..served import tiny_config


@pytest.fixture(scope="module")
def model_and_hasher(ds_tokenizer):
    cfg = tiny_config(layer_ids=[1, 2])
    torch.manual_seed(0)
    model = DemoModel(BackboneConfig(num_layers=3, hidden_size=32, hc_mult=2, heads=4, max_positions=64), cfg).eval()
    return model, NgramHasher(model.engram_config, ds_tokenizer)


def test_cached_decode_equals_a_longer_prefill(model_and_hasher):
    """KV caches, conv states and lookback states carry a sequence across steps: decoding token
    T after a prefill of T tokens gives the logits of prefilling T + 1 tokens."""
    model, hasher = model_and_hasher
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 128_000, (3, 12)))
    lengths = torch.tensor([12, 7, 9])

    def prefill(n):
        state, lookback = model.new_state(3), hasher.new_state(3, device="cpu")
        h = hasher.hash_stacked(ids[:, :int(n.max())], lookback, n)
        pos = torch.arange(int(n.max())).expand(3, -1)
        return model(ids[:, :int(n.max())], pos, state, {1: h[0], 2: h[1]}, n), state, lookback

    with torch.no_grad():
        _, state, lookback = prefill(lengths - 1)
        nxt = ids[torch.arange(3), lengths - 1][:, None]
        h = hasher.hash_stacked(nxt, lookback)
        stepped = model(nxt, (lengths - 1)[:, None], state, {1: h[0], 2: h[1]})
        whole, _, _ = prefill(lengths)
    torch.testing.assert_close(stepped, whole, rtol=1e-4, atol=1e-4)


def test_configuration_errors():
    with pytest.raises(ValueError, match="need at least 16 blocks"):
        DemoModel(BackboneConfig(num_layers=4, hidden_size=32), EngramConfig())
    with pytest.raises(ValueError, match="divisible by heads"):
        BackboneConfig(hidden_size=30, heads=4)
