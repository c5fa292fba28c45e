"""The fused gate against the Engram module's PyTorch ops. Tolerance: float32 within 1e-5; bf16
within 2 bf16 ulps of the output scale (the kernel keeps float32 where the reference rounds to
bf16 after each op, so the kernel is the more accurate of the two: checked against float64)."""
import pytest
import torch

from . import DEVICES


def inputs(dtype, device, M=2, D=96):
    g = torch.Generator().manual_seed(2)
    make = lambda *s: (torch.randn(*s, generator=g) * 2).to(dtype).to(device)  # noqa: E731
    return make(3, 5, M, D), make(3, 5, M, D), make(3, 5, D), make(M, D), make(M, D)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gate_equals_reference(dtype, device):
    from kernels.gate import gate, gate_reference
    key, hidden, value, w1, w2 = inputs(dtype, device)
    eps = torch.finfo(dtype).eps
    got = gate(key, hidden, value, w1, w2, eps, eps)
    want = gate_reference(key, hidden, value, w1, w2, eps, eps)
    exact = gate_reference(*(t.double() for t in (key, hidden, value, w1, w2)), eps, eps)
    assert got.shape == want.shape and got.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        ulp = 2 ** -7 * value.abs().max().item()
        assert (got.double() - want.double()).abs().max().item() <= 2 * ulp
        assert (got.double() - exact).abs().max() <= (want.double() - exact).abs().max() + 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_engram_module_uses_the_fused_gate(device):
    """The whole Engram layer with the kernel gate stays within the bf16 tolerance of the reference."""
    import kernels
    from model_client import Engram

    from ..conftest import small_config
    config = small_config(row_dtype="bfloat16", hc_mult=2)
    torch.manual_seed(0)
    module = Engram(config, 1).to(torch.bfloat16)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    module.to(device)
    hidden = torch.randn(2, 9, 2, config.hidden_size).to(torch.bfloat16).to(device)
    hash_ids = torch.randint(0, 900, (2, 9, config.num_columns)).to(device)
    with torch.no_grad(), kernels.backend("reference"):
        want = module(hidden, hash_ids)
    with torch.no_grad(), kernels.backend("triton"):
        got = module(hidden, hash_ids)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    assert not torch.equal(got, torch.zeros_like(got))
