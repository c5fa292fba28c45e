"""Hashing of every Engram layer in one launch: token ids -> per-sub-table indices and global row ids.

For layer l, order n (2..N) and head j (column c = (n-2)*K + j):
    x_k[t]  = compressed id of token t-k (the lookback state's ids before the chunk's start)
    mix_n   = XOR_{k<n} x_k * m[l, k]            (int64, wrapping)
    idx     = mix_n mod p[l, c]  (floor mod)     row = idx + offset[l, c]
One program hashes BLOCK_T tokens of one sequence for all layers and columns at once: a
[BLOCK_T, L, C] tile, stored row-major into [L, B, T, C]. It also emits each sequence's new lookback
(its last N-1 compressed ids after `lengths[b]` tokens) into a separate buffer, which the caller
copies into the state: in place, the program reading the old lookback could race with it.
`hash_layers_reference` is the same arithmetic in PyTorch (NgramHasher's own path) and the oracle.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _hash_kernel(ids_ptr, look_ptr, lut_ptr, len_ptr, mult_ptr, primes_ptr, offs_ptr,
                 idx_ptr, row_ptr, state_ptr, B, T,
                 L: tl.constexpr, L_PAD: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                 C_PAD: tl.constexpr, P_PAD: tl.constexpr, BLOCK_T: tl.constexpr, COMPRESS: tl.constexpr,
                 ROWS: tl.constexpr, HAS_LENGTHS: tl.constexpr, FAST_MOD: tl.constexpr):
    b = tl.program_id(0)
    P: tl.constexpr = N - 1
    C: tl.constexpr = P * K
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < T
    layers = tl.arange(0, L_PAD)
    l_ok = layers < L
    cols = tl.arange(0, C_PAD)
    c_ok = cols < C
    order = cols // K                                           # 0 for 2-grams, 1 for 3-grams, ...

    mix = tl.zeros([BLOCK_T, L_PAD], dtype=tl.int64)
    col_mix = tl.zeros([BLOCK_T, L_PAD, C_PAD], dtype=tl.int64)
    for k in tl.static_range(N):
        pos = t - k
        inside = pos >= 0
        x = tl.load(ids_ptr + b * T + pos, mask=t_ok & inside, other=0)
        if COMPRESS:
            x = tl.load(lut_ptr + x, mask=t_ok & inside, other=0)
        back = tl.load(look_ptr + b * P + P + pos, mask=t_ok & (pos < 0), other=0)
        x = tl.where(inside, x, back)
        m = tl.load(mult_ptr + layers * N + k, mask=l_ok, other=0)
        mix = mix ^ (x[:, None] * m[None, :])
        if k >= 1:  # mix now covers orders up to k+1: the columns of order k+1
            col_mix = tl.where((order == k - 1)[None, None, :], mix[:, :, None], col_mix)

    lc = layers[:, None] * C + cols[None, :]
    lc_ok = l_ok[:, None] & c_ok[None, :]
    p = tl.load(primes_ptr + lc, mask=lc_ok, other=1)[None, :, :]
    if FAST_MOD:
        # floor(mix / p) from a float64 product: its error is below |mix| / p * 2**-51 <= 2**12 / p
        # < 1/2 for p >= 2**13 (FAST_MOD is only set then), so the quotient is off by at most one and
        # one correction each way makes r = mix - q * p exact (int64 arithmetic wraps; r is small)
        quotient = tl.floor(col_mix.to(tl.float64) * (1.0 / p.to(tl.float64))).to(tl.int64)
        rest = col_mix - quotient * p
        rest = tl.where(rest < 0, rest + p, rest)
        idx = tl.where(rest >= p, rest - p, rest)
    else:
        idx = col_mix % p
        idx = tl.where(idx < 0, idx + p, idx)                    # remsi truncates; the reference floors
    out = (layers[None, :, None] * B + b) * T * C + t[:, None, None] * C + cols[None, None, :]
    ok = t_ok[:, None, None] & lc_ok[None, :, :]
    tl.store(idx_ptr + out, idx, mask=ok)
    if ROWS:
        offset = tl.load(offs_ptr + lc, mask=lc_ok, other=0)
        tl.store(row_ptr + out, idx + offset[None, :, :], mask=ok)

    if tl.program_id(1) == 0:  # the sequence's lookback after its first lengths[b] tokens
        if HAS_LENGTHS:
            n = tl.load(len_ptr + b).to(tl.int64)
        else:
            n = T
        j = tl.arange(0, P_PAD)
        j_ok = j < P
        q = n - P + j
        last = tl.load(ids_ptr + b * T + q, mask=j_ok & (q >= 0), other=0)
        if COMPRESS:
            last = tl.load(lut_ptr + last, mask=j_ok & (q >= 0), other=0)
        older = tl.load(look_ptr + b * P + P + q, mask=j_ok & (q < 0), other=0)
        tl.store(state_ptr + b * P + j, tl.where(q >= 0, last, older), mask=j_ok)


_FAST_MOD_MIN_PRIME = 1 << 13
_min_prime: dict = {}


def hash_layers(ids: torch.Tensor, lookback: torch.Tensor, mult: torch.Tensor, primes: torch.Tensor,
                offsets: torch.Tensor | None = None, lut: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None, block_t: int = 32, num_warps: int = 4,
                fast_mod: bool | None = None):
    """ids int [B, T] (raw when `lut` is given, else compressed); lookback int64 [B, N-1];
    mult int64 [L, N]; primes, offsets int64 [L, C]; lengths int [B] or None.
    Returns (indices [L, B, T, C], global rows [L, B, T, C] or None, new lookback [B, N-1])."""
    B, T = ids.shape
    L, N = mult.shape
    C = primes.shape[1]
    P = N - 1
    ids = ids.contiguous().long()
    idx = torch.empty(L, B, T, C, dtype=torch.int64, device=ids.device)
    rows = torch.empty_like(idx) if offsets is not None else idx
    state = torch.empty(B, P, dtype=torch.int64, device=ids.device)
    block_t = min(block_t, triton.next_power_of_2(T))
    if fast_mod is None:  # the float64 quotient is exact enough for primes >= 2**13 (all real tables)
        key = (primes.data_ptr(), primes.numel())
        if key not in _min_prime:
            _min_prime[key] = int(primes.min())          # one sync per primes tensor, then cached
        fast_mod = _min_prime[key] >= _FAST_MOD_MIN_PRIME
    grid = (B, triton.cdiv(T, block_t))
    _hash_kernel[grid](
        ids, lookback.contiguous(), lut if lut is not None else ids, lengths if lengths is not None else ids,
        mult, primes, offsets if offsets is not None else primes, idx, rows, state, B, T,
        L=L, L_PAD=triton.next_power_of_2(L), N=N, K=C // P, C_PAD=triton.next_power_of_2(C),
        P_PAD=triton.next_power_of_2(P), BLOCK_T=block_t, COMPRESS=lut is not None,
        ROWS=offsets is not None, HAS_LENGTHS=lengths is not None, FAST_MOD=fast_mod, num_warps=num_warps)
    return idx, (rows if offsets is not None else None), state


def hash_layers_reference(ids, lookback, mult, primes, offsets=None, lut=None, lengths=None):
    """The same in PyTorch ops (the arithmetic of NgramHasher's vectorized path)."""
    x = lut[ids.long()] if lut is not None else ids.long()
    L, N = mult.shape
    P, C = N - 1, primes.shape[1]
    K, T = C // P, x.shape[1]
    ext = torch.cat([lookback.long(), x], dim=1)                                 # [B, P + T]
    shifts = torch.stack([ext[:, P - k:P - k + T] for k in range(N)])            # [N, B, T]
    products = shifts[None] * mult[:, :, None, None]                             # [L, N, B, T]
    mix, orders = products[:, 0], []
    for n in range(2, N + 1):
        mix = mix ^ products[:, n - 1]
        orders.append(mix[..., None] % primes[:, (n - 2) * K:(n - 1) * K][:, None, None, :])
    idx = torch.cat(orders, dim=-1)
    rows = idx + offsets[:, None, None, :] if offsets is not None else None
    n = torch.full((x.shape[0],), T, device=x.device) if lengths is None else lengths.long().to(x.device)
    state = torch.gather(ext, 1, n[:, None] + torch.arange(P, device=x.device))
    return idx, rows, state
