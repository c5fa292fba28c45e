import ml_dtypes
import numpy as np
import pytest
import torch

from core.row_format import RowFormat

DTYPES = ["float32", "bfloat16", "float16", "fp8-e4m3"]


def values(n=500, d=80, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d)).astype(np.float32) * np.logspace(-3, 3, n, dtype=np.float32)[:, None]
    v[0] = 0.0
    return v


@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_and_torch_decode_identically(dtype):
    fmt = RowFormat(dtype, 80)
    rows = fmt.encode(values())
    assert rows.dtype == np.uint8 and rows.shape == (500, fmt.row_bytes)
    from_numpy = fmt.decode(rows)
    from_torch = fmt.decode_torch(torch.from_numpy(rows), torch.float32).numpy()
    np.testing.assert_array_equal(from_numpy, from_torch)
    as_bf16 = fmt.decode_torch(torch.from_numpy(rows).reshape(5, 100, -1), torch.bfloat16)
    assert as_bf16.shape == (5, 100, 80) and as_bf16.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_float_rows_round_like_torch(dtype):
    v = values()
    torch_dtype = getattr(torch, dtype)
    expect = torch.from_numpy(v).to(torch_dtype).float().numpy()
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(RowFormat(dtype, 80).decode(RowFormat(dtype, 80).encode(v)), expect)


def test_representable_values_round_trip_exactly():
    fmt = RowFormat("fp8-e4m3", 64)
    e4m3 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    grid = e4m3[np.isfinite(e4m3)][:64 * 3].reshape(3, 64)
    grid[:, 0] = 448.0  # block max 448 -> scale 2**0 keeps every value as it is
    grid[:, 32] = 448.0
    np.testing.assert_array_equal(fmt.decode(fmt.encode(grid)), grid)


def test_fp8_scale_is_the_smallest_sufficient_power_of_two():
    fmt = RowFormat("fp8-e4m3", 40)  # a full block of 32 and a partial block of 8
    v = np.zeros((4, 40), np.float32)
    v[0, 0], v[0, 35] = 448.0, 448.0 * 2 ** 10   # exactly 448 * 2**k -> scale 2**k
    v[1, 0], v[1, 39] = 449.0, 1e-3               # just above -> the next power of two
    v[2, 5] = -3.0e-5                             # 3e-5 / 448 = 2**-23.8 -> 2**-23
    scales = fmt.encode(v)[:, 40:].astype(int) - 127
    assert scales[0].tolist() == [0, 10]
    assert scales[1].tolist() == [1, -18]
    assert scales[2].tolist() == [-23, 0]         # an all-zero block gets scale 1
    assert scales[3].tolist() == [0, 0]
    block_max = np.abs(fmt.decode(fmt.encode(v))).max()
    assert block_max <= 448.0 * 2 ** 10
    rel = np.abs(fmt.decode(fmt.encode(values(d=40))) - values(d=40)).max(axis=1)
    assert (rel <= np.abs(values(d=40)).max(axis=1) / 16 + 1e-30).all()  # 3 mantissa bits


def test_bad_rows_are_rejected():
    with pytest.raises(ValueError, match=r"shape \[N, 64\]"):
        RowFormat("float32", 64).encode(np.zeros((2, 63)))
    with pytest.raises(ValueError, match="finite"):
        RowFormat("fp8-e4m3", 32).encode(np.full((1, 32), np.inf))
    with pytest.raises(ValueError, match="row_dtype"):
        RowFormat("int4", 32)
