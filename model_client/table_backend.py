"""Table backends: where the Engram module gets one layer's rows from.

A backend answers `lookup(row_ids)` for global row ids of one layer's [sum(primes), head_dim] table
and returns the rows decoded to the caller's dtype. Every backend moves rows as the same stored bytes
(RowFormat) and decodes them with the same function, so a remote table gives bit-identical rows to a
local one. `LocalTableBackend` keeps the whole table in memory (CPU or GPU); the remote backend (memory
service + row cache) comes with the client.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from core.errors import BadRowIds
from core.row_format import RowFormat
from core.table_init import seeded_rows
from kernels import use_triton


class TableBackend(Protocol):
    row_format: RowFormat
    num_rows: int

    def lookup(self, row_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """int64 [...] global row ids -> `dtype` [..., head_dim] rows."""
        ...


class LocalTableBackend(nn.Module):
    """One layer's table held in memory as encoded rows (uint8 [num_rows, row_bytes]).

    The rows are a non-persistent buffer: they move with `.to(device)` but are not part of the
    module's state dict (tables are loaded through `load_weight` or built from a store)."""

    def __init__(self, encoded_rows, row_format: RowFormat):
        super().__init__()
        rows = torch.as_tensor(encoded_rows)
        if rows.dtype != torch.uint8 or rows.dim() != 2 or rows.shape[1] != row_format.row_bytes:
            raise ValueError(f"encoded rows must be uint8 [num_rows, {row_format.row_bytes}]; "
                             f"got {rows.dtype} {tuple(rows.shape)}")
        self.num_rows = rows.shape[0]
        self.row_format = row_format
        self.register_buffer("rows", rows, persistent=False)

    @classmethod
    def from_values(cls, values, row_format: RowFormat) -> "LocalTableBackend":
        """Encode float rows [num_rows, head_dim] (numpy or torch) into a backend."""
        if isinstance(values, torch.Tensor):
            values = values.detach().to("cpu", torch.float32).numpy()
        return cls(torch.from_numpy(row_format.encode(values)), row_format)

    @classmethod
    def seeded(cls, num_rows: int, row_format: RowFormat, seed: int, layer_id: int) -> "LocalTableBackend":
        """The same rows `engram-memory load --random-init --seed S` writes for this layer."""
        return cls.from_values(seeded_rows(seed, layer_id, 0, num_rows, row_format.head_dim), row_format)

    def load_weight(self, weight) -> None:
        """Store a float weight [num_rows, head_dim] (the reference's embedding.weight) in row_format."""
        if isinstance(weight, torch.Tensor):
            weight = weight.detach().to("cpu", torch.float32).numpy()
        expected = (self.num_rows, self.row_format.head_dim)
        if tuple(weight.shape) != expected:
            raise ValueError(f"embedding weight has shape {tuple(weight.shape)}; this layer's table "
                             f"needs {list(expected)} (sum of its prime sub-table sizes x head_dim)")
        encoded = torch.from_numpy(self.row_format.encode(weight))
        self.rows = encoded.to(self.rows.device)

    def lookup(self, row_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows of caller-supplied ids, range-checked (two device syncs on a GPU)."""
        flat = row_ids.reshape(-1).to(self.rows.device)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_rows):
            bad = flat[(flat < 0) | (flat >= self.num_rows)][0]
            raise BadRowIds(f"row id {int(bad)} is outside this table's rows [0, {self.num_rows})")
        return self.gather(row_ids, dtype)

    def gather(self, row_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows of ids the hasher made (each a sub-table index mod its prime + the sub-table's offset,
        so inside the table by construction): no check, no sync (local_step.py). On CUDA the remote
        path's gather kernel, decoding on the way: the baseline gets the same kernel, and a uint8
        index_select moves a 256-byte row one byte per thread (slower than the kernel, issue 16)."""
        flat = row_ids.reshape(-1).to(self.rows.device)
        if use_triton(flat):
            from kernels.gather import gather_rows
            out = gather_rows(self.rows, self.rows[:0], flat, None, self.row_format.row_dtype,
                              self.row_format.head_dim, dtype)
        else:
            out = self.row_format.decode_torch(self.rows.index_select(0, flat), dtype)
        return out.reshape(*row_ids.shape, -1)
