"""RowFormat: how one table row of head_dim values is laid out in bytes, for every row dtype.

float32 / bfloat16 / float16: head_dim little-endian values.
fp8-e4m3: head_dim e4m3fn bytes, then one ue8m0 scale byte per block of 32 values (the last block
may be shorter). A scale byte e means 2**(e - 127); value = e4m3 * scale. The scale of a block is the
smallest power of two that maps the block's max |value| into e4m3's range (448).

Encoding runs once at load time on the host (numpy + ml_dtypes); decoding runs on every lookup, in
numpy (service-side tests, tools) or in torch on the rows' device, and both give identical values.
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .config import FP8_BLOCK, ROW_DTYPES

E4M3_MAX = 448.0
_NUMPY_DTYPES = {"float32": np.dtype("<f4"), "bfloat16": np.dtype(ml_dtypes.bfloat16),
                 "float16": np.dtype("<f2"), "fp8-e4m3": np.dtype(ml_dtypes.float8_e4m3fn)}


@dataclass(frozen=True)
class RowFormat:
    row_dtype: str
    head_dim: int

    def __post_init__(self):
        if self.row_dtype not in ROW_DTYPES:
            raise ValueError(f"row_dtype must be one of {', '.join(ROW_DTYPES)}; got {self.row_dtype!r}")
        if self.head_dim < 1:
            raise ValueError(f"head_dim must be >= 1; got {self.head_dim}")

    @property
    def is_fp8(self) -> bool:
        return self.row_dtype == "fp8-e4m3"

    @property
    def num_scales(self) -> int:
        return -(-self.head_dim // FP8_BLOCK) if self.is_fp8 else 0

    @property
    def row_bytes(self) -> int:
        return self.head_dim * _NUMPY_DTYPES[self.row_dtype].itemsize + self.num_scales

    # ---- host side ---------------------------------------------------------------------------------
    def encode(self, values: np.ndarray) -> np.ndarray:
        """float [N, head_dim] -> uint8 [N, row_bytes] (round to nearest even)."""
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != self.head_dim:
            raise ValueError(f"rows must have shape [N, {self.head_dim}]; got {values.shape}")
        if not self.is_fp8:
            typed = values.astype(_NUMPY_DTYPES[self.row_dtype])
            return np.ascontiguousarray(typed).view(np.uint8).reshape(len(values), self.row_bytes)
        exponents = self._block_exponents(values)                       # int [N, blocks]
        scale = np.ldexp(np.float32(1), exponents - 127).astype(np.float32)
        scaled = values / np.repeat(scale, FP8_BLOCK, axis=1)[:, :self.head_dim]
        out = np.empty((len(values), self.row_bytes), dtype=np.uint8)
        out[:, :self.head_dim] = scaled.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
        out[:, self.head_dim:] = exponents.astype(np.uint8)
        return out

    def _block_exponents(self, values: np.ndarray) -> np.ndarray:
        n, pad = len(values), self.num_scales * FP8_BLOCK - self.head_dim
        blocks = np.pad(np.abs(values), ((0, 0), (0, pad))).reshape(n, self.num_scales, FP8_BLOCK)
        amax = blocks.max(axis=2).astype(np.float64)
        if not np.isfinite(amax).all():
            raise ValueError("fp8-e4m3 rows must be finite (found inf or nan)")
        # smallest k with amax / 2**k <= 448; frexp gives amax/448 = m * 2**e with m in [0.5, 1)
        mantissa, k = np.frexp(amax / E4M3_MAX)
        k = np.where(mantissa == 0.5, k - 1, k)                          # exact powers of two
        return np.clip(np.where(amax == 0, 0, k) + 127, 0, 254).astype(np.int64)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """uint8 [N, row_bytes] -> float32 [N, head_dim]."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8).reshape(-1, self.row_bytes)
        if not self.is_fp8:
            return rows.view(_NUMPY_DTYPES[self.row_dtype]).astype(np.float32)
        values = rows[:, :self.head_dim].view(ml_dtypes.float8_e4m3fn).astype(np.float32)
        scale = np.ldexp(np.float32(1), rows[:, self.head_dim:].astype(np.int32) - 127).astype(np.float32)
        return values * np.repeat(scale, FP8_BLOCK, axis=1)[:, :self.head_dim]

    # ---- device side -------------------------------------------------------------------------------
    def decode_torch(self, rows, dtype):
        """uint8 tensor [..., row_bytes] -> `dtype` tensor [..., head_dim] on the rows' device.
        Float rows are cast once; fp8 rows are dequantized in float32, then cast."""
        import torch
        lead = rows.shape[:-1]
        if not self.is_fp8:
            typed = rows.contiguous().view(_torch_dtype(self.row_dtype)).reshape(*lead, self.head_dim)
            return typed.to(dtype)
        values = rows[..., :self.head_dim].contiguous().view(torch.float8_e4m3fn).float()
        exponents = rows[..., self.head_dim:].to(torch.int32) - 127
        scale = torch.ldexp(torch.ones((), device=rows.device), exponents.float())
        scale = scale.repeat_interleave(FP8_BLOCK, dim=-1)[..., :self.head_dim]
        return (values * scale).to(dtype)


def _torch_dtype(row_dtype: str):
    import torch
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[row_dtype]
