"""The Engram gate, fused: per token and hyper-connection branch m (D = hidden_size)
    s       = <RMSNorm1^m(key^m), RMSNorm2^m(h^m)> / sqrt(D)      key^m = W_K^m e (a cuBLAS GEMM)
    alpha   = sigmoid(sign(s) * sqrt(max(|s|, 1e-6)))
    out^m   = alpha * value                                          value = W_V e, shared
One program per (token, branch) keeps the three D-vectors in registers: the reference's ~12 kernel
launches and their [B, T, D] intermediates in HBM become one pass over key, h and value. The kernel
accumulates in float32 end to end, where the reference rounds to the model dtype after each op, so
bf16 results differ by a few bf16 ulps (the tests state the tolerance).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def _gate_kernel(key_ptr, hidden_ptr, value_ptr, w1_ptr, w2_ptr, out_ptr, D, eps1, eps2, inv_sqrt_d,
                 M: tl.constexpr, BLOCK_D: tl.constexpr):
    token, m = tl.program_id(0), tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    ok = cols < D
    at = (token * M + m) * D + cols
    k = tl.load(key_ptr + at, mask=ok, other=0.0).to(tl.float32)
    h = tl.load(hidden_ptr + at, mask=ok, other=0.0).to(tl.float32)
    w1 = tl.load(w1_ptr + m * D + cols, mask=ok, other=0.0).to(tl.float32)
    w2 = tl.load(w2_ptr + m * D + cols, mask=ok, other=0.0).to(tl.float32)
    k = k * tl.rsqrt(tl.sum(k * k, axis=0) / D + eps1) * w1
    h = h * tl.rsqrt(tl.sum(h * h, axis=0) / D + eps2) * w2
    s = tl.sum(k * h, axis=0) * inv_sqrt_d
    sign = tl.where(s > 0, 1.0, tl.where(s < 0, -1.0, 0.0))
    alpha = tl.sigmoid(sign * tl.sqrt(tl.maximum(tl.abs(s), 1e-6)))
    v = tl.load(value_ptr + token * D + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + at, (alpha * v).to(out_ptr.dtype.element_ty), mask=ok)


def gate(key: torch.Tensor, hidden: torch.Tensor, value: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
         eps1: float, eps2: float) -> torch.Tensor:
    """key, hidden [B, T, M, D]; value [B, T, D]; w1, w2 [M, D] -> gated value [B, T, M, D]."""
    B, T, M, D = key.shape
    out = torch.empty(B, T, M, D, dtype=value.dtype, device=value.device)
    _gate_kernel[(B * T, M)](key.contiguous(), hidden.contiguous(), value.contiguous(), w1.contiguous(),
                             w2.contiguous(), out, D, eps1, eps2, 1.0 / math.sqrt(D), M=M,
                             BLOCK_D=triton.next_power_of_2(D))
    return out


def gate_reference(key, hidden, value, w1, w2, eps1, eps2):
    """The Engram module's gate in PyTorch ops, rounding to the model dtype after each op."""
    D, gates = key.shape[-1], []
    for m in range(key.shape[2]):
        k = F.rms_norm(key[:, :, m], (D,), w1[m], eps1)
        q = F.rms_norm(hidden[:, :, m], (D,), w2[m], eps2)
        s = (k * q).sum(dim=-1) / math.sqrt(D)
        s = s.abs().clamp_min(1e-6).sqrt() * s.sign()
        gates.append(s.sigmoid().unsqueeze(-1))
    return torch.stack(gates, dim=2) * value.unsqueeze(2)
