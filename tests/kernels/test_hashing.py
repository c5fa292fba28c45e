"""The hashing kernel equals its reference and NgramHasher exactly, for raw and compressed ids,
ragged lengths, a carried lookback state and every preset's geometry."""
import numpy as np
import pytest
import torch

import kernels
from model_client import EngramConfig, NgramHasher

from . import DEVICES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", ["demo", "deepseek-v4.1"])  # N-1 = 2 and 3 (a non-power-of-two)
def test_hash_kernel_equals_reference_and_hasher(ds_tokenizer, preset, device):
    from kernels.hashing import hash_layers, hash_layers_reference
    hasher = NgramHasher(EngramConfig.preset(preset), ds_tokenizer)
    consts = hasher._consts(device)
    g = torch.Generator().manual_seed(7)
    B, T, P = 3, 70, hasher.config.max_ngram_size - 1             # T spans two token blocks of 64
    ids = torch.randint(0, hasher.tokenizer.vocab_size, (B, T), generator=g).to(device)
    lookback = torch.randint(0, hasher.compressed_vocab_size, (B, P), generator=g).to(device)
    lengths = torch.tensor([T, 0, 2]).to(device)
    for lut, x in ((consts["lookup"], ids), (None, consts["lookup"][ids])):  # raw, then compressed ids
        want = hash_layers_reference(x, lookback, consts["mult"], consts["primes"], consts["offsets"], lut, lengths)
        for fast_mod in (True, False):  # the float64-quotient modulo and the int64 one
            got = hash_layers(x, lookback, consts["mult"], consts["primes"], consts["offsets"], lut, lengths,
                              fast_mod=fast_mod)
            for a, b in zip(got, want):
                assert a.dtype == torch.int64 and torch.equal(a, b)
    with kernels.backend("reference"):                            # NgramHasher's own numpy path
        state = hasher.new_state(B)
        state.ids[:] = lookback.cpu().numpy()
        expected = hasher.hash_stacked(ids.cpu().numpy(), state, lengths.cpu().numpy())
    assert np.array_equal(got[0].cpu().numpy(), expected)
    assert np.array_equal(got[2].cpu().numpy(), state.ids)


@pytest.mark.parametrize("device", DEVICES)
def test_hasher_dispatches_to_the_kernel_chunk_by_chunk(demo_hasher, device):
    """Hashing a sequence in chunks with the kernel (state carried on the device) gives the indices
    of hashing it whole with the reference."""
    ids = torch.randint(0, demo_hasher.tokenizer.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3))
    with kernels.backend("reference"):
        whole, rows = demo_hasher.hash_and_rows(ids)
    with kernels.backend("triton"):
        state = demo_hasher.new_state(2, device=device)
        parts = [demo_hasher.hash_and_rows(ids[:, a:b].to(device), state) for a, b in ((0, 17), (17, 18), (18, 40))]
    assert torch.equal(torch.cat([p[0] for p in parts], dim=2).cpu(), whole)
    assert torch.equal(torch.cat([p[1] for p in parts], dim=2).cpu(), rows)
    with kernels.backend("triton"), pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        demo_hasher.hash_and_rows((ids + 10**6).to(device))


@pytest.mark.parametrize("device", DEVICES)
def test_small_primes_take_the_exact_int64_modulo(ds_tokenizer, device):
    """Primes below 2**13 (test geometries) would break the float64 quotient's error bound: the
    kernel picks the int64 modulo for them by itself."""
    from kernels.hashing import hash_layers, hash_layers_reference

    from ..conftest import small_config
    hasher = NgramHasher(small_config(), ds_tokenizer)
    consts = hasher._consts(device)
    assert int(consts["primes"].max()) < 1 << 13
    ids = torch.randint(0, hasher.tokenizer.vocab_size, (2, 9)).to(device)
    look = torch.full((2, 2), hasher.pad_id).to(device)
    args = (ids, look, consts["mult"], consts["primes"], consts["offsets"], consts["lookup"])
    assert all(torch.equal(a, b) for a, b in zip(hash_layers(*args), hash_layers_reference(*args)))
