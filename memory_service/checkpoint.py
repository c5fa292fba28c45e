"""Row sources for loading tables: seeded random init, safetensors and torch checkpoints.

A source yields float32 rows [start, stop) of one layer's table without reading the whole tensor:
safetensors files (one, or the shards of `engram-memory train` through their index) are parsed by
core.checkpoint_format and memory-mapped, so a 30 GB checkpoint loads in bounded memory and without
torch; `.pt`/`.bin` files go through
`torch.load(mmap=True)` when torch is installed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core import checkpoint_format
from core.table_init import seeded_rows

DEFAULT_TENSOR = checkpoint_format.TABLE_TENSOR


class RandomRows:
    def __init__(self, seed: int, layer_id: int, head_dim: int):
        self.seed, self.layer_id, self.head_dim = seed, layer_id, head_dim
        self.description = f"random-init seed={seed}"

    def rows(self, start: int, stop: int) -> np.ndarray:
        return seeded_rows(self.seed, self.layer_id, start, stop, self.head_dim)


class CheckpointRows:
    """One [num_rows, head_dim] tensor of a checkpoint, read a row range at a time: a .safetensors
    file, the index of a sharded one (the table's row shards stitched in order), or a torch file."""

    def __init__(self, path: str | Path, tensor: str, num_rows: int, head_dim: int):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"checkpoint {path} does not exist")
        self.description = f"checkpoint {path} tensor {tensor}"
        if path.name.endswith(".json"):
            self.parts = checkpoint_format.index_parts(path, tensor)
        elif path.suffix == ".safetensors":
            self.parts = [(0, checkpoint_format.tensor(path, tensor))]
        else:
            self.parts = [(0, _torch_tensor(path, tensor))]
        for first, part in self.parts:  # every row shard of head_dim values
            if tuple(part.shape[1:]) != (head_dim,):
                raise ValueError(f"checkpoint tensor {tensor} (rows from {first}) has shape {list(part.shape)}; "
                                 f"this layer's rows have {head_dim} values")
        last_start, last = self.parts[-1]
        shape = [last_start + last.shape[0], *last.shape[1:]] if len(last.shape) else []
        if tuple(shape) != (num_rows, head_dim):
            raise ValueError(f"checkpoint tensor {tensor} has shape {shape}; this "
                             f"layer's table needs [{num_rows}, {head_dim}] (sum of its prime sub-table "
                             "sizes x head_dim): was it trained with another EngramConfig?")

    def rows(self, start: int, stop: int) -> np.ndarray:
        blocks = []
        for first, array in self.parts:
            lo, hi = max(start, first), min(stop, first + array.shape[0])
            if lo < hi:
                block = array[lo - first:hi - first]
                if not isinstance(block, np.ndarray):  # a torch tensor
                    block = block.float().numpy()
                blocks.append(np.asarray(block, dtype=np.float32))
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def _torch_tensor(path: Path, name: str):
    try:
        import torch
    except ImportError:
        raise ValueError(f"reading {path} needs torch (pip install engram-memory[worker]); "
                         "safetensors files load without it") from None
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and name not in state:
        state = state["state_dict"]
    if name not in state:
        raise ValueError(f"checkpoint {path} has no tensor {name!r}")
    return state[name]
