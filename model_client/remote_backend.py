"""RemoteTableBackend: an Engram layer's table served by the prefetcher's tiers.

The Engram module asks its backend for the rows of global row ids; this backend answers from the
prefetcher's current step, which fetched exactly those rows at forward entry. Rows travel as the
stored bytes and decode with the same RowFormat as a LocalTableBackend, so the module's output is
bit-identical to one holding the whole table in memory.
"""
from __future__ import annotations

import torch

from core.geometry import TableGeometry
from core.row_format import RowFormat

from .prefetcher import Prefetcher


class RemoteTableBackend:
    def __init__(self, prefetcher: Prefetcher, layer_id: int, check: bool = True):
        config = prefetcher.hasher.config
        self.prefetcher, self.layer_id, self.check = prefetcher, layer_id, check
        self.row_format = RowFormat(config.row_dtype, config.head_dim)
        self.num_rows = TableGeometry.from_config(config).rows(layer_id)
        manifest = prefetcher.tiers.backing.describe(prefetcher.tables[layer_id])
        manifest.check_compatible(config, prefetcher.hasher.tokenizer.sha256, prefetcher.hasher.compressed_vocab_size)

    def lookup(self, row_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        step = self.prefetcher.current
        if step is None or not step.pending(self.layer_id):
            raise RuntimeError(f"Engram layer {self.layer_id}: no prefetched rows; call prefetcher.start("
                               "input_ids) at forward entry, once per forward pass")
        # a safety net against silently wrong rows (one device sync; check=False skips it)
        if self.check and not torch.equal(step.row_ids(self.layer_id), row_ids.to(step.row_stack.device)):
            raise RuntimeError(f"Engram layer {self.layer_id} asked for other rows than the step prefetched: "
                               "pass step.hash_ids(layer) to the layer")
        return step.embeddings(self.layer_id, self.row_format, dtype)
