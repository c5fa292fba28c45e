"""The gather kernel decodes rows exactly as RowFormat does, from the cache and the fetched rows,
for every row dtype (fp8 with extreme ue8m0 scales too) and every output dtype."""
import numpy as np
import pytest
import torch

from core.config import ROW_DTYPES
from core.row_format import RowFormat

from . import DEVICES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("row_dtype", ROW_DTYPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gather_equals_reference(row_dtype, dtype, device):
    from kernels.gather import gather_rows, gather_rows_reference
    head_dim = 40                                               # two fp8 scale blocks, the last short
    fmt = RowFormat(row_dtype, head_dim)
    rng = np.random.default_rng(5)
    values = rng.standard_normal((50, head_dim)).astype(np.float32) * rng.choice([1e-30, 1e-3, 1, 1e3], (50, 1))
    values[0] = 0                                                # scale byte 0 (2**-127, a subnormal)
    encoded = torch.from_numpy(fmt.encode(values))
    cache, fetched = encoded[:30].to(device), encoded[30:].to(device)
    loc = torch.tensor(list(range(30)) + [-1 - i for i in range(20)])[torch.randperm(50)].to(device)
    inverse = torch.randint(0, 50, (3, 7, 5)).to(device)
    got = gather_rows(cache, fetched, loc, inverse, row_dtype, head_dim, dtype)
    want = gather_rows_reference(cache, fetched, loc, inverse, row_dtype, head_dim, dtype)
    assert got.shape == (3 * 7 * 5, head_dim) and got.dtype == dtype
    assert torch.equal(got.cpu().view(torch.uint8 if dtype != torch.float32 else torch.int32),
                       want.cpu().view(torch.uint8 if dtype != torch.float32 else torch.int32))  # bits


@pytest.mark.parametrize("device", DEVICES)
def test_gather_without_fetched_rows(device):
    from kernels.gather import gather_rows
    rows = torch.from_numpy(RowFormat("bfloat16", 8).encode(np.eye(8, dtype=np.float32))).to(device)
    out = gather_rows(rows, rows[:0], torch.arange(8).to(device), torch.tensor([7, 0]).to(device),
                      "bfloat16", 8, torch.float32)
    assert torch.equal(out.cpu(), torch.eye(8)[[7, 0]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("row_dtype", ROW_DTYPES)
def test_gather_without_inverse_reads_row_i_at_loc_i(row_dtype, device):
    """inverse=None (a whole local table: its ids are its slots) equals the identity inverse."""
    from kernels.gather import gather_rows, gather_rows_reference
    fmt = RowFormat(row_dtype, 40)
    table = torch.from_numpy(fmt.encode(np.random.default_rng(6).standard_normal((30, 40)).astype(np.float32)))
    ids = torch.tensor([29, 0, 7, 7, 13])
    got = gather_rows(table.to(device), table[:0].to(device), ids.to(device), None, row_dtype, 40, torch.bfloat16)
    want = gather_rows_reference(table, table[:0], ids, torch.arange(5), row_dtype, 40, torch.bfloat16)
    assert torch.equal(got.cpu().view(torch.int16), want.view(torch.int16))
    assert torch.equal(got.cpu().view(torch.int16), fmt.decode_torch(table[ids], torch.bfloat16).view(torch.int16))
