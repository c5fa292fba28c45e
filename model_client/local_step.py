"""LocalStep: one forward pass's row ids for Engram layers that hold their whole table (the local
baseline), computed once at forward entry by the hasher.

The ids come from NgramHasher.hash_and_rows (a sub-table index mod its prime plus the sub-table's
offset), so they lie inside the table by construction and the layer gathers them with no range
check: no device sync, which a decode step under a CUDA graph could not have. Ids a caller made
itself go through `LocalTableBackend.lookup`, which checks them (Engram.forward without a step).
"""
from __future__ import annotations

import torch


class LocalStep:
    def __init__(self, layers: list[int], hash_ids: torch.Tensor, row_ids: torch.Tensor, backends: dict):
        """hash_ids, row_ids [L, B, T, C] from hash_and_rows; backends {layer: LocalTableBackend}."""
        self.backends = backends
        self.hash = {layer: hash_ids[i] for i, layer in enumerate(layers)}   # one view each: the identity
        self.rows = {layer: row_ids[i] for i, layer in enumerate(layers)}    # check below relies on it

    def hash_ids(self, layer: int) -> torch.Tensor:
        return self.hash[layer]

    def embeddings(self, layer: int, hash_ids: torch.Tensor, row_format, dtype: torch.dtype) -> torch.Tensor:
        """[B, T, C, head_dim] rows of the layer for this step's `hash_ids` (the same tensor it handed out)."""
        if hash_ids is not self.hash_ids(layer):
            raise RuntimeError(f"Engram layer {layer} asked for other rows than the step hashed: "
                               "pass step.hash_ids(layer) to the layer")
        return self.backends[layer].gather(self.rows[layer], dtype)
