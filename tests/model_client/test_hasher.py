"""Hashing equals a direct scalar recomputation of the formula; numpy == torch; chunked == whole."""
import numpy as np
import pytest
import torch

from core.geometry import TableGeometry
from model_client import EngramConfig, NgramHasher

from ..conftest import real_text_ids

MASK64 = (1 << 64) - 1


def wrap64(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def scalar_hash(raw_ids: np.ndarray, cfg: EngramConfig, lookup: np.ndarray, n_compressed: int) -> dict:
    """The formula of DESIGN.md section 2, one token and one head at a time in Python integers."""
    half_bound = max(1, ((2**63 - 1) // n_compressed) // 2)
    primes = TableGeometry.from_config(cfg).table_sizes
    pad = int(lookup[cfg.pad_id])
    out = {}
    for layer in cfg.layer_ids:
        r = np.random.default_rng(cfg.seed + 10007 * layer).integers(
            0, half_bound, size=cfg.max_ngram_size, dtype=np.int64)
        m = [int(v) * 2 + 1 for v in r]
        B, T = raw_ids.shape
        res = np.empty((B, T, cfg.num_columns), dtype=np.int64)
        for b in range(B):
            x = [int(lookup[i]) for i in raw_ids[b]]
            for t in range(T):
                col = 0
                for n in range(2, cfg.max_ngram_size + 1):
                    mix = 0
                    for k in range(n):
                        tok = x[t - k] if t - k >= 0 else pad
                        mix ^= wrap64(tok * m[k])
                    for _ in range(cfg.n_head_per_ngram):
                        res[b, t, col] = mix % primes[layer][col]
                        col += 1
        out[layer] = res
    return out


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for layer in a:
        got = b[layer].numpy() if isinstance(b[layer], torch.Tensor) else b[layer]
        assert got.dtype == np.int64
        np.testing.assert_array_equal(a[layer], got)


def test_random_ids_match_scalar_formula(demo_hasher, ds_tokenizer):
    x = np.random.default_rng(1).integers(0, ds_tokenizer.vocab_size, size=(3, 40))
    expect = scalar_hash(x, demo_hasher.config, ds_tokenizer.lookup, ds_tokenizer.num_compressed)
    assert_same(expect, demo_hasher.hash(x))


@pytest.mark.parametrize("language", ["en", "zh"])
def test_real_text_matches_scalar_formula(language, demo_hasher, ds_tokenizer):
    ids = real_text_ids(ds_tokenizer, language, 20_000)[:600].reshape(2, 300)
    expect = scalar_hash(ids, demo_hasher.config, ds_tokenizer.lookup, ds_tokenizer.num_compressed)
    assert_same(expect, demo_hasher.hash(ids))


def test_v41_geometry_and_other_seed_match_scalar_formula(ds_tokenizer):
    cfg = EngramConfig.preset("deepseek-v4.1").replace(seed=7)
    hasher = NgramHasher(cfg, ds_tokenizer)
    x = np.random.default_rng(2).integers(0, ds_tokenizer.vocab_size, size=(2, 25))
    assert_same(scalar_hash(x, cfg, ds_tokenizer.lookup, ds_tokenizer.num_compressed), hasher.hash(x))


def test_indices_lie_in_their_sub_tables(demo_hasher, ds_tokenizer):
    ids = real_text_ids(ds_tokenizer, "en", 200_000)
    out = demo_hasher.hash(ids[: len(ids) // 512 * 512].reshape(-1, 512))
    for layer, idx in out.items():
        primes = np.array(demo_hasher.table_sizes[layer])
        assert (idx >= 0).all() and (idx < primes).all()
        rows = demo_hasher.row_ids(layer, idx)
        assert rows.min() >= 0 and rows.max() < primes.sum()


@pytest.mark.parametrize("language", ["en", "zh"])
def test_numpy_equals_torch_on_real_text(language, demo_hasher, ds_tokenizer):
    ids = real_text_ids(ds_tokenizer, language)[:8 * 1024].reshape(8, 1024)
    np_out = demo_hasher.hash(ids)
    for dtype in (torch.int64, torch.int32):
        t_out = demo_hasher.hash(torch.from_numpy(ids).to(dtype))
        assert all(t.device.type == "cpu" for t in t_out.values())
        assert_same(np_out, t_out)
    stacked = demo_hasher.hash_stacked(torch.from_numpy(ids))
    np.testing.assert_array_equal(demo_hasher.row_ids_stacked(stacked).numpy(),
                                  demo_hasher.row_ids_stacked(demo_hasher.hash_stacked(ids)))


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_token_by_token_decode_equals_whole_sequence(lib, demo_hasher, ds_tokenizer):
    ids = real_text_ids(ds_tokenizer, "en")[:4 * 50].reshape(4, 50)
    whole = demo_hasher.hash(ids)
    x = torch.from_numpy(ids) if lib == "torch" else ids
    state = demo_hasher.new_state(4, device="cpu" if lib == "torch" else None)
    steps = [demo_hasher.hash(x[:, t:t + 1], state=state) for t in range(50)]
    for layer in whole:
        got = np.concatenate([np.asarray(s[layer]) for s in steps], axis=1)
        np.testing.assert_array_equal(whole[layer], got)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_ragged_chunked_prefill_then_decode(lib, demo_hasher, ds_tokenizer):
    """Sequences of different lengths, prefilled in right-padded chunks, then decoded one token a
    step, give each sequence exactly the indices of hashing it alone and whole."""
    rng = np.random.default_rng(3)
    text = real_text_ids(ds_tokenizer, "en")
    lengths = [37, 5, 64, 1, 20]
    prompts = [text[i * 100:i * 100 + n] for i, n in enumerate(lengths)]
    decode = rng.integers(0, ds_tokenizer.vocab_size, size=(5, 6))
    as_lib = (lambda a: torch.from_numpy(np.asarray(a))) if lib == "torch" else np.asarray
    state = demo_hasher.new_state(5, device="cpu" if lib == "torch" else None)
    got = [{layer: [] for layer in demo_hasher.config.layer_ids} for _ in lengths]
    chunk = 16
    for start in range(0, max(lengths), chunk):
        x = np.zeros((5, chunk), dtype=np.int64)
        n = np.clip(np.array(lengths) - start, 0, chunk)
        for b, p in enumerate(prompts):
            x[b, :n[b]] = p[start:start + n[b]]
        out = demo_hasher.hash(as_lib(x), state=state, lengths=as_lib(n))
        for b in range(5):
            for layer, idx in out.items():
                got[b][layer].append(np.asarray(idx[b, :n[b]]))
    for t in range(decode.shape[1]):
        out = demo_hasher.hash(as_lib(decode[:, t:t + 1]), state=state)
        for b in range(5):
            for layer, idx in out.items():
                got[b][layer].append(np.asarray(idx[b]))
    for b in range(5):
        whole = demo_hasher.hash(np.concatenate([prompts[b], decode[b]])[None])
        for layer in whole:
            np.testing.assert_array_equal(whole[layer][0], np.concatenate(got[b][layer]))


def test_state_reset_starts_a_new_sequence(demo_hasher):
    x = np.array([[10, 20, 30], [40, 50, 60]])
    state = demo_hasher.new_state(2)
    demo_hasher.hash(x, state=state)
    state.reset([1], demo_hasher.pad_id)
    after = demo_hasher.hash(x[:, :1], state=state)
    fresh = demo_hasher.hash(x[1:, :1])
    for layer in after:
        np.testing.assert_array_equal(after[layer][1], fresh[layer][0])
        assert not np.array_equal(after[layer][0], demo_hasher.hash(x[:1, :1])[layer][0])


@pytest.mark.parametrize("bad,error,match", [
    (np.zeros((2, 3), dtype=np.float32), TypeError, "integer token ids"),
    (torch.zeros(2, 3), TypeError, "integer token ids"),
    (torch.zeros(2, 3, dtype=torch.bool), TypeError, "integer token ids"),
    (np.zeros(5, dtype=np.int64), ValueError, "rank 2"),
    (np.zeros((1, 2, 3), dtype=np.int64), ValueError, "rank 2"),
    (np.zeros((0, 4), dtype=np.int64), ValueError, "empty"),
    (np.zeros((2, 0), dtype=np.int64), ValueError, "empty"),
    (np.array([[1, 128_815]]), ValueError, r"input_ids\[0, 1\] = 128815 is outside"),
    (torch.tensor([[-5, 1]]), ValueError, r"input_ids\[0, 0\] = -5 is outside"),
])
def test_bad_inputs_raise_clear_errors(demo_hasher, bad, error, match):
    with pytest.raises(error, match=match):
        demo_hasher.hash(bad)


def test_bad_state_and_lengths(demo_hasher):
    x = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="state holds 3 sequences but input_ids has 2"):
        demo_hasher.hash(x, state=demo_hasher.new_state(3))
    with pytest.raises(TypeError, match="both be numpy or both torch"):
        demo_hasher.hash(torch.from_numpy(x), state=demo_hasher.new_state(2))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 3\]"):
        demo_hasher.hash(x, state=demo_hasher.new_state(2), lengths=np.array([1, 4]))
    with pytest.raises(ValueError, match=r"lengths must have shape \[2\]"):
        demo_hasher.hash(x, state=demo_hasher.new_state(2), lengths=np.array([1]))


def test_pad_id_outside_vocabulary_is_rejected(ds_tokenizer):
    with pytest.raises(ValueError, match="EngramConfig.pad_id"):
        NgramHasher(EngramConfig(pad_id=200_000), ds_tokenizer)


def test_compressed_input_skips_compression(demo_hasher, ds_tokenizer):
    x = np.random.default_rng(4).integers(0, ds_tokenizer.vocab_size, size=(2, 30))
    direct = demo_hasher.hash(demo_hasher.compress(x), compressed=True)
    assert_same(demo_hasher.hash(x), direct)
    with pytest.raises(ValueError, match="outside"):
        demo_hasher.hash(np.array([[98_627]]), compressed=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_input_stays_on_device(demo_hasher, ds_tokenizer):
    ids = real_text_ids(ds_tokenizer, "en")[:4096].reshape(4, 1024)
    x = torch.from_numpy(ids).cuda()
    out = demo_hasher.hash(x, validate=False)
    assert all(t.is_cuda for t in out.values())
    assert_same(demo_hasher.hash(ids), {k: v.cpu() for k, v in out.items()})
    state = demo_hasher.new_state(4, device="cuda")
    steps = [demo_hasher.hash(x[:, t:t + 1], state=state) for t in range(16)]
    for layer in out:
        torch.testing.assert_close(torch.cat([s[layer] for s in steps], 1), out[layer][:, :16], rtol=0, atol=0)
