"""TableRows: one training step's Engram rows, where the Engram layers read them (as the serving Step).

The model asks `embeddings(layer, hash_ids, row_format, dtype)` as it asks the prefetcher's Step
(model_client/step.py); here the rows are the sharded tables' gathered rows, a leaf per layer whose
gradient `push` sends back to the owners. `zeros=True` serves every row as zeros (the ablation that
shows what a missing row served as zeros does to the loss).
"""
from __future__ import annotations

import torch

from core.row_format import RowFormat


class TrainingBackend:
    """Stands in the Engram module's table backend: training rows come through TableRows only."""

    def __init__(self, num_rows: int, row_format: RowFormat):
        self.num_rows, self.row_format = num_rows, row_format

    def lookup(self, row_ids, dtype):
        raise RuntimeError("a training Engram layer reads its rows through TableRows (pass step=)")


class TableRows:
    def __init__(self, tables: dict, hasher, input_ids, zeros: bool = False):
        """Hash [B, T] token ids (numpy) and gather every layer's distinct rows from its table."""
        self.zeros = zeros
        stacked = hasher.hash_stacked(input_ids)                       # [L, B, T, C] sub-table indices
        device = next(iter(tables.values())).device
        self.hash_ids, self.rows = {}, {}
        for i, layer in enumerate(hasher.config.layer_ids):
            if layer not in tables:
                continue
            self.hash_ids[layer] = torch.from_numpy(stacked[i]).to(device)
            global_ids = torch.from_numpy(hasher.row_ids(layer, stacked[i])).to(device)
            self.rows[layer] = tables[layer].gather(global_ids)        # (leaf [U, hd], inverse [B, T, C])

    def embeddings(self, layer: int, hash_ids: torch.Tensor, row_format, dtype: torch.dtype) -> torch.Tensor:
        rows, inverse = self.rows[layer]
        if self.zeros:
            return rows.new_zeros(*inverse.shape, rows.shape[1], dtype=dtype)
        return rows.to(dtype)[inverse]                                  # [B, T, C, hd]

    def push(self, tables: dict) -> None:
        """After backward: each layer's row gradients to their owners, who step their Adam."""
        for layer, (rows, _) in self.rows.items():
            tables[layer].push(rows.grad)
