"""RemoteTableBackend: an Engram layer's table served by the prefetcher's tiers.

It holds no rows: the prefetcher's step of each forward pass fetched exactly the layer's rows at
forward entry, and the Engram module reads them from the step it is handed (`Engram.forward(...,
step=step)`). The backend says what the rows are (row format, rows in the table) and, when built,
checks that the served table was made for this model's config. Rows travel as the stored bytes and
decode with the same RowFormat as a LocalTableBackend, so the module's output is bit-identical to
one holding the whole table in memory.
"""
from __future__ import annotations

import torch

from core.geometry import TableGeometry
from core.row_format import RowFormat

from .prefetcher import Prefetcher


class RemoteTableBackend:
    def __init__(self, prefetcher: Prefetcher, layer_id: int):
        config = prefetcher.hasher.config
        self.layer_id = layer_id
        self.row_format = RowFormat(config.row_dtype, config.head_dim)
        self.num_rows = TableGeometry.from_config(config).rows(layer_id)
        manifest = prefetcher.tiers.backing.describe(prefetcher.tables[layer_id])
        manifest.check_compatible(config, prefetcher.hasher.tokenizer.sha256, prefetcher.hasher.compressed_vocab_size)

    def lookup(self, row_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        raise RuntimeError(f"Engram layer {self.layer_id}: its table is remote; pass the forward pass's step "
                           "(step = prefetcher.start(input_ids) at forward entry) to the layer")
