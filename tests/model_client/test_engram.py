"""The Engram module against an independent re-statement of the reference forward pass."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.errors import BadRowIds
from core.row_format import RowFormat
from model_client import Engram, NgramHasher
from model_client.table_backend import LocalTableBackend

from ..conftest import real_text_ids, small_config


def oracle_value(params: dict, table, offsets, hash_ids, hidden, cfg) -> torch.Tensor:
    """The gated value V~ [B, T, M, D] for hidden [B, T, M, D], straight from the formulas."""
    e = table[hash_ids + offsets].flatten(-2)                                  # [B, T, E]
    gates = []
    for m in range(cfg.hc_mult):
        k = rms(F.linear(e, params[f"key_projs.{m}.weight"], params[f"key_projs.{m}.bias"]),
                params[f"norm1.{m}.weight"])
        q = rms(hidden[:, :, m], params[f"norm2.{m}.weight"])
        s = (k * q).sum(-1) / math.sqrt(cfg.hidden_size)
        gates.append(torch.sigmoid(torch.sign(s) * torch.sqrt(torch.clamp(s.abs(), min=1e-6))))
    return torch.stack(gates, 2)[..., None] * F.linear(e, params["value_proj.weight"],
                                                       params["value_proj.bias"])[:, :, None]


def oracle(params: dict, table, offsets, hash_ids, hidden, cfg) -> torch.Tensor:
    """Y = V~ + SiLU(causal depthwise conv of the per-branch RMSNorm of V~), via F.conv1d."""
    value = oracle_value(params, table, offsets, hash_ids, hidden, cfg)
    B, T, M, D = value.shape
    normed = torch.cat([rms(value[:, :, m], params[f"short_conv.norms.{m}.weight"], 1e-5)
                        for m in range(M)], -1).transpose(1, 2)                # [B, M*D, T]
    dil, K = cfg.max_ngram_size, cfg.kernel_size
    conv = F.conv1d(normed, params["short_conv.conv.weight"], padding=(K - 1) * dil,
                    dilation=dil, groups=M * D)[..., :T]
    return value + F.silu(conv).transpose(1, 2).reshape(B, T, M, D)


def rms(x, weight, eps=None):
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def random_params(module: Engram, seed=0) -> dict:
    """A reference-named state dict with every parameter random (conv included)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * (0.3 if "conv" in k else 1.0)
            if v.is_floating_point() else v.clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def setup(ds_tokenizer):
    cfg = small_config()
    hasher = NgramHasher(cfg, ds_tokenizer)
    ids = real_text_ids(ds_tokenizer, "en")[:3 * 40].reshape(3, 40)
    return cfg, hasher, ids


def test_matches_oracle_with_reference_state_dict(setup):
    cfg, hasher, ids = setup
    layer = cfg.layer_ids[1]
    module = Engram(cfg, layer)
    params = random_params(module)
    rows = sum(hasher.table_sizes[layer])
    table = torch.randn(rows, cfg.head_dim, generator=torch.Generator().manual_seed(1))
    module.load_reference_state_dict({**params, "multi_head_embedding.embedding.weight": table})
    hash_ids = torch.from_numpy(hasher.hash(ids)[layer])
    hidden = torch.randn(3, 40, cfg.hc_mult, cfg.hidden_size)
    with torch.no_grad():
        y = module(hidden, hash_ids)
        expect = oracle(params, table, module.multi_head_embedding.offsets, hash_ids, hidden, cfg)
    assert y.shape == hidden.shape
    torch.testing.assert_close(y, expect, rtol=1e-5, atol=1e-5)
    assert module.short_conv.conv.weight.abs().sum() > 0  # the conv really contributed


def test_zero_init_conv_gives_the_gated_value(setup):
    cfg, hasher, ids = setup
    module = Engram(cfg, cfg.layer_ids[0])
    assert torch.count_nonzero(module.short_conv.conv.weight) == 0
    backend = module.multi_head_embedding.embedding
    table = torch.from_numpy(backend.row_format.decode(backend.rows.numpy()))
    hash_ids = torch.from_numpy(hasher.hash(ids)[cfg.layer_ids[0]])
    hidden = torch.randn(3, 40, cfg.hc_mult, cfg.hidden_size)
    with torch.no_grad():
        y = module(hidden, hash_ids)
        value = oracle_value(module.state_dict(), table, module.multi_head_embedding.offsets,
                             hash_ids, hidden, cfg)
    assert torch.equal(y, value)  # SiLU(conv(.)) with zero weights is exactly 0


@pytest.mark.parametrize("row_dtype", ["float32", "bfloat16", "float16", "fp8-e4m3"])
def test_row_dtypes_decode_to_the_module_dtype(setup, row_dtype):
    cfg, hasher, ids = setup
    cfg = cfg.replace(row_dtype=row_dtype)
    layer = cfg.layer_ids[0]
    module = Engram(cfg, layer)
    backend = module.multi_head_embedding.embedding
    decoded = torch.from_numpy(backend.row_format.decode(backend.rows.numpy()))
    hash_ids = torch.from_numpy(hasher.hash(ids)[layer])
    hidden = torch.randn(3, 40, cfg.hc_mult, cfg.hidden_size)
    params = random_params(module, seed=2)
    module.load_state_dict(params)
    with torch.no_grad():
        y = module(hidden, hash_ids)
        expect = oracle(params, decoded, module.multi_head_embedding.offsets, hash_ids, hidden, cfg)
    torch.testing.assert_close(y, expect, rtol=1e-5, atol=1e-5)
    bf16 = module.to(torch.bfloat16)
    with torch.no_grad():
        y16 = bf16(hidden.to(torch.bfloat16), hash_ids)
    assert y16.dtype == torch.bfloat16 and y16.shape == hidden.shape
    torch.testing.assert_close(y16.float(), expect, rtol=0.1, atol=0.1)


def test_plain_backbone_hc1_takes_btd(setup):
    cfg, hasher, ids = setup
    cfg = cfg.replace(hc_mult=1)
    module = Engram(cfg, cfg.layer_ids[0])
    hash_ids = torch.from_numpy(hasher.hash(ids)[cfg.layer_ids[0]])
    hidden = torch.randn(3, 40, cfg.hidden_size)
    with torch.no_grad():
        y = module(hidden, hash_ids)
        y4 = module(hidden[:, :, None], hash_ids)
    assert y.shape == (3, 40, cfg.hidden_size)
    assert torch.equal(y, y4[:, :, 0])


def test_decode_with_conv_state_equals_whole_sequence(setup):
    cfg, hasher, ids = setup
    layer = cfg.layer_ids[0]
    module = Engram(cfg, layer)
    module.load_state_dict(random_params(module, seed=3))
    hidden = torch.randn(3, 40, cfg.hc_mult, cfg.hidden_size)
    hash_ids = torch.from_numpy(hasher.hash(ids)[layer])
    with torch.no_grad():
        whole = module(hidden, hash_ids)
        state = module.new_conv_state(3)
        prefill = module(hidden[:, :25], hash_ids[:, :25], conv_state=state)
        steps = [module(hidden[:, t:t + 1], hash_ids[:, t:t + 1], conv_state=state) for t in range(25, 40)]
    got = torch.cat([prefill, *steps], dim=1)
    # The projections run as GEMMs of other shapes ([3, 1, E] vs [3, 40, E]), which may sum in
    # another order: float32 rounding, not a state error (the conv alone is bit-exact, below).
    torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)


def test_short_conv_chunked_is_bit_identical():
    """The conv alone: same ops in the same order, whole or chunked with ragged lengths."""
    from model_client.engram import ShortConv
    conv = ShortConv(hidden_size=16, kernel_size=4, dilation=3, hc_mult=2)
    with torch.no_grad():
        conv.conv.weight.normal_()
        x = torch.randn(3, 30, 2, 16)
        whole = conv(x)
        state = conv.new_state(3)
        lengths = torch.tensor([7, 0, 10])
        first = conv(x[:, :10], state, lengths)          # row 1 consumes nothing yet
        pieces = [[first[0, :7]], [], [first[2, :10]]]
        starts = [7, 0, 10]
        for _ in range(30):
            batch = torch.stack([x[b, min(starts[b], 29)] for b in range(3)])[:, None]
            out = conv(batch, state)
            for b in range(3):
                if starts[b] < 30:
                    pieces[b].append(out[b])
                starts[b] += 1
    for b in range(3):
        assert torch.equal(torch.cat(pieces[b]), whole[b])


def test_loading_checks_geometry_and_names(setup):
    cfg, hasher, _ = setup
    module = Engram(cfg, cfg.layer_ids[0])
    params = random_params(module)
    bad_offsets = {**params, "multi_head_embedding.offsets": params["multi_head_embedding.offsets"] + 1}
    with pytest.raises(ValueError, match="offsets .* differ"):
        module.load_reference_state_dict(bad_offsets, strict=False)
    with pytest.raises(ValueError, match=r"embedding weight has shape \(5, 8\)"):
        module.load_reference_state_dict({**params, "multi_head_embedding.embedding.weight": torch.zeros(5, 8)})
    with pytest.raises(KeyError, match="embedding.weight"):
        module.load_reference_state_dict(params)
    with pytest.raises(RuntimeError, match="key_projs.9"):
        rows = sum(hasher.table_sizes[cfg.layer_ids[0]])
        module.load_reference_state_dict({**params, "key_projs.9.weight": torch.zeros(1),
                                          "multi_head_embedding.embedding.weight": torch.zeros(rows, 8)})


def test_bad_inputs_raise_clear_errors(setup):
    cfg, hasher, ids = setup
    module = Engram(cfg, cfg.layer_ids[0])
    hash_ids = torch.from_numpy(hasher.hash(ids)[cfg.layer_ids[0]])
    hidden = torch.randn(3, 40, cfg.hc_mult, cfg.hidden_size)
    with pytest.raises(ValueError, match=r"hidden_states must be \[B, T, hc_mult=4"):
        module(hidden[:, :, :2], hash_ids)
    with pytest.raises(TypeError, match="dtype torch.float64 differs"):
        module(hidden.double(), hash_ids)
    with pytest.raises(TypeError, match="integer tensor"):
        module(hidden, hash_ids.float())
    with pytest.raises(ValueError, match=r"hash_ids must be \[B, T, num_columns\] = \[3, 40, 8\]"):
        module(hidden, hash_ids[..., :5])
    with pytest.raises(ValueError, match="empty batch"):
        module(hidden[:0], hash_ids[:0])
    with pytest.raises(ValueError, match="conv_state must be"):
        module(hidden, hash_ids, conv_state=torch.zeros(3, 1, 1))
    with pytest.raises(BadRowIds, match=r"row id -\d+ is outside this table's rows"):
        module(hidden, hash_ids - 10_000)
    with pytest.raises(ValueError, match="layer_id 2 is not one of"):
        Engram(cfg, 2)
    wrong = LocalTableBackend(torch.zeros(10, RowFormat("float32", cfg.head_dim).row_bytes, dtype=torch.uint8),
                              RowFormat("float32", cfg.head_dim))
    with pytest.raises(ValueError, match="table backend holds 10 rows"):
        Engram(cfg, cfg.layer_ids[0], backend=wrong)


def test_seeded_local_table_is_deterministic(setup):
    cfg, _, _ = setup
    a = Engram(cfg, cfg.layer_ids[0]).multi_head_embedding.embedding.rows
    b = Engram(cfg, cfg.layer_ids[0]).multi_head_embedding.embedding.rows
    c = Engram(cfg.replace(seed=1), cfg.layer_ids[0]).multi_head_embedding.embedding.rows
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert np.isclose(RowFormat("float32", cfg.head_dim).decode(a.numpy()).std(), 1.0, atol=0.05)
