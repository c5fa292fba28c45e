"""The decode-attention kernel against the model's PyTorch op: ragged lengths (1 to the whole cache),
nothing read past a row's length, and the same bits every run."""
import pytest
import torch

from model_client.demo_model import decode_attention_reference

from . import DEVICES


def inputs(device, B=5, H=3, S=150, hd=32, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(*shape, generator=g).to(dtype) for shape in ((B, H, hd), (B, H, S, hd), (B, H, S, hd)))
    lengths = torch.tensor([1, 64, 65, S, 97][:B])
    return q.to(device), k.to(device), v.to(device), lengths.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_decode_attention_equals_reference(device):
    from kernels.decode_attention import decode_attention
    q, k, v, lengths = inputs(device)
    want = decode_attention_reference(q, k, v, lengths)
    # past each length: NaN, which any read would carry into the output
    for b, n in enumerate(lengths.tolist()):
        k[b, :, n:], v[b, :, n:] = float("nan"), float("nan")
    got = decode_attention(q, k, v, lengths)
    assert got.dtype == q.dtype and got.shape == q.shape
    assert torch.isfinite(got.float()).all()
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=2 ** -7)  # within a bf16 rounding
    assert torch.equal(got[0], v[0, :, 0])  # one key: its value, exactly
    assert torch.equal(decode_attention(q, k, v, lengths), got)


def test_reference_ignores_keys_past_each_length():
    q, k, v, lengths = inputs("cpu", dtype=torch.float32)
    want = decode_attention_reference(q, k, v, lengths)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 64:], v2[1, :, 64:] = 1e4, -1e4
    assert torch.equal(decode_attention_reference(q, k2, v2, lengths), want)
    manual = torch.softmax((q[1, :, None] @ k[1, :, :64].transpose(-1, -2)) * 32 ** -0.5, dim=-1) @ v[1, :, :64]
    torch.testing.assert_close(want[1], manual[:, 0], rtol=1e-5, atol=1e-5)
