"""Gather rows into the Engram input, decoding them on the way: fp8-e4m3 with ue8m0 block scales
(one scale byte per 32 values, value = e4m3 * 2**(e - 127)) or a float row dtype, to the model dtype.

Sources: the device cache's slots (rows hit by this step) and the rows fetched for this step's
misses. loc[u] >= 0 is unique row u's cache slot, loc[u] < 0 its index -1 - loc[u] among the
fetched rows; inverse[i] is output row i's unique row (no inverse: output row i is unique row i, as
for a whole local table, whose ids are its slots). One program writes BLOCK output rows of head_dim
values: the [B, T, columns, head_dim] input of the Engram layer, no intermediate copy.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.config import FP8_BLOCK

_STORAGE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@triton.jit
def _gather_kernel(cache_ptr, fetched_ptr, loc_ptr, inv_ptr, out_ptr, n,
                   ROW_ELEMS: tl.constexpr, HEAD_DIM: tl.constexpr, HD_PAD: tl.constexpr,
                   FP8: tl.constexpr, SCALE_BLOCK: tl.constexpr, BF16_BITS: tl.constexpr,
                   IDENTITY: tl.constexpr, BLOCK: tl.constexpr):
    off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = off < n
    unique = off if IDENTITY else tl.load(inv_ptr + off, mask=ok, other=0)
    loc = tl.load(loc_ptr + unique, mask=ok, other=0)
    cached = loc >= 0
    row = tl.where(cached, loc, -1 - loc)
    cols = tl.arange(0, HD_PAD)
    col_ok = cols < HEAD_DIM
    at = row[:, None] * ROW_ELEMS + cols[None, :]
    in_cache = (ok & cached)[:, None] & col_ok[None, :]
    in_fetched = (ok & ~cached)[:, None] & col_ok[None, :]
    x = tl.where(in_cache, tl.load(cache_ptr + at, mask=in_cache, other=0),
                 tl.load(fetched_ptr + at, mask=in_fetched, other=0))
    if FP8:
        s_at = row[:, None] * ROW_ELEMS + HEAD_DIM + cols[None, :] // SCALE_BLOCK
        e = tl.where(in_cache, tl.load(cache_ptr + s_at, mask=in_cache, other=0),
                     tl.load(fetched_ptr + s_at, mask=in_fetched, other=0)).to(tl.int32)
        # 2**(e - 127) as float32 bits: exponent field e; e = 0 is the subnormal 2**-127
        scale = tl.where(e == 0, 0x00400000, e << 23).to(tl.float32, bitcast=True)
        value = x.to(tl.float8e4nv, bitcast=True).to(tl.float32) * scale
    else:
        value = x
    out_at = off[:, None] * HEAD_DIM + cols[None, :]
    if BF16_BITS:  # float32 -> bfloat16 rounded to nearest even by hand: the interpreter truncates
        bits = value.to(tl.float32).to(tl.uint32, bitcast=True)
        value = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.int16)
    else:
        value = value.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + out_at, value, mask=ok[:, None] & col_ok[None, :])


def _typed(rows: torch.Tensor, row_dtype: str) -> torch.Tensor:
    return rows if row_dtype == "fp8-e4m3" else rows.view(_STORAGE[row_dtype])


def gather_rows(cache_data: torch.Tensor, fetched: torch.Tensor, loc: torch.Tensor, inverse: torch.Tensor | None,
                row_dtype: str, head_dim: int, dtype: torch.dtype, rows_per_program: int = 0) -> torch.Tensor:
    """uint8 cache rows [S, row_bytes] and fetched rows [M, row_bytes]; loc int64 [U]; inverse int64
    [N] (None: N = U, row i is unique row i) -> `dtype` [N, head_dim] on loc's device. The rows may
    live in pinned host memory, which the GPU then reads over PCIe (a host mirror read inside a CUDA
    graph)."""
    n = loc.numel() if inverse is None else inverse.numel()
    out = torch.empty(n, head_dim, dtype=dtype, device=loc.device)  # cache_data may be a pinned host table
    if n == 0:
        return out
    cache_t, fetched_t = _typed(cache_data, row_dtype), _typed(fetched, row_dtype)
    if fetched_t.numel() == 0:
        fetched_t = cache_t                       # never read (no negative loc), but a valid pointer
    # ~4k values per program from HBM; reads over PCIe (a pinned host table) are latency-bound and
    # want more programs in flight, so the caller asks for fewer rows per program
    block = rows_per_program or max(16, 4096 // triton.next_power_of_2(head_dim))
    # bf16 output from wider values: written as rounded int16 bits (bf16 rows are copied as they are)
    bf16_bits = dtype == torch.bfloat16 and row_dtype != "bfloat16"
    _gather_kernel[(triton.cdiv(n, block),)](
        cache_t, fetched_t, loc, loc if inverse is None else inverse.reshape(-1), out.view(torch.int16) if bf16_bits else out, n,
        ROW_ELEMS=cache_t.shape[1], HEAD_DIM=head_dim, HD_PAD=triton.next_power_of_2(head_dim),
        FP8=row_dtype == "fp8-e4m3", SCALE_BLOCK=FP8_BLOCK, BF16_BITS=bf16_bits, IDENTITY=inverse is None,
        BLOCK=block)
    return out


def gather_rows_reference(cache_data, fetched, loc, inverse, row_dtype, head_dim, dtype):
    """The same with PyTorch ops: assemble the unique rows, expand, decode (RowFormat.decode_torch)."""
    from core.row_format import RowFormat
    cached = loc >= 0
    inverse = torch.arange(len(loc), device=loc.device) if inverse is None else inverse
    unique = torch.empty(len(loc), cache_data.shape[1], dtype=torch.uint8, device=cache_data.device)
    unique[cached] = cache_data[loc[cached]]
    unique[~cached] = fetched[-1 - loc[~cached]]
    return RowFormat(row_dtype, head_dim).decode_torch(unique[inverse.reshape(-1)], dtype)
