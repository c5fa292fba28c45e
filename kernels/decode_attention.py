"""Decode attention over each sequence's own length, as one Triton kernel with a fixed reduction order.

One new query per sequence attends to the first seq_lens[b] keys of its KV cache [B, H, S, hd]:
    out[b, h] = softmax(q[b, h] . K[b, h, :n]^T / sqrt(hd)) V[b, h, :n]      n = seq_lens[b]
One program per (sequence, head) walks its keys in blocks of BLOCK_N, oldest first, keeping the
running max, the softmax denominator and the weighted sum of values in float32 (online softmax).
Nothing past n is read: the work is the KV bytes the sequences actually hold, not the batch's
longest context. The loop order is fixed, so a step gives the same bits every run, under a CUDA
graph or not (SDPA's fused kernels did not on an H200 at batch 64 x 1,024 keys). seq_lens is read
on the device: no host sync. The PyTorch reference is the model's own op on CPU,
model_client.demo_model.decode_attention_reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _decode_attention_kernel(q_ptr, k_ptr, v_ptr, len_ptr, out_ptr, H, S, scale,
                             HD: tl.constexpr, BLOCK_N: tl.constexpr):
    b, h = tl.program_id(0), tl.program_id(1)
    n = tl.load(len_ptr + b)
    dims = tl.arange(0, HD)
    q = tl.load(q_ptr + (b * H + h) * HD + dims).to(tl.float32) * scale
    base = (b * H + h) * S * HD
    m = tl.full([], float("-inf"), tl.float32)                  # running max of the scores
    denom = tl.full([], 0.0, tl.float32)                        # running softmax denominator
    acc = tl.zeros([HD], tl.float32)
    for start in range(0, n, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        ok = keys < n
        at = base + keys[:, None] * HD + dims[None, :]
        k = tl.load(k_ptr + at, mask=ok[:, None], other=0.0).to(tl.float32)
        s = tl.where(ok, tl.sum(k * q[None, :], axis=1), float("-inf"))            # [BLOCK_N]
        m_new = tl.maximum(m, tl.max(s, axis=0))
        p = tl.exp(s - m_new)
        correction = tl.exp(m - m_new)
        v = tl.load(v_ptr + at, mask=ok[:, None], other=0.0).to(tl.float32)
        acc = acc * correction + tl.sum(p[:, None] * v, axis=0)
        denom = denom * correction + tl.sum(p, axis=0)
        m = m_new
    tl.store(out_ptr + (b * H + h) * HD + dims, (acc / denom).to(out_ptr.dtype.element_ty))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     seq_lens: torch.Tensor) -> torch.Tensor:
    """q [B, H, hd]; k_cache, v_cache [B, H, S, hd] (contiguous); seq_lens int [B], each in [1, S]
    -> [B, H, hd] in q's dtype."""
    B, H, hd = q.shape
    S = k_cache.shape[2]
    if hd & (hd - 1):
        raise ValueError(f"decode_attention needs a power-of-two head_dim; got {hd}")
    out = torch.empty_like(q)
    # 64 keys x 128 dims x 2 bytes = 16 KiB of K (and of V) per iteration and program
    _decode_attention_kernel[(B, H)](q.contiguous(), k_cache, v_cache, seq_lens.to(torch.int32), out, H, S,
                                     hd ** -0.5, HD=hd, BLOCK_N=64, num_warps=4)
    return out

