"""Row sources for loading tables: seeded random init, safetensors and torch checkpoints.

A source yields float32 rows [start, stop) of one layer's table without reading the whole tensor:
safetensors files are parsed by hand (8-byte header length, JSON header, raw data) and memory-mapped,
so a 30 GB checkpoint loads in bounded memory and without torch; `.pt`/`.bin` files go through
`torch.load(mmap=True)` when torch is installed.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from core.table_init import seeded_rows

DEFAULT_TENSOR = "layers.{L}.engram.multi_head_embedding.embedding.weight"
_SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16),
                       "F64": np.dtype("<f8")}


class RandomRows:
    def __init__(self, seed: int, layer_id: int, head_dim: int):
        self.seed, self.layer_id, self.head_dim = seed, layer_id, head_dim
        self.description = f"random-init seed={seed}"

    def rows(self, start: int, stop: int) -> np.ndarray:
        return seeded_rows(self.seed, self.layer_id, start, stop, self.head_dim)


class CheckpointRows:
    """One [num_rows, head_dim] tensor of a checkpoint, read a row range at a time."""

    def __init__(self, path: str | Path, tensor: str, num_rows: int, head_dim: int):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"checkpoint {path} does not exist")
        self.description = f"checkpoint {path} tensor {tensor}"
        if path.suffix == ".safetensors":
            self.array = _safetensors_tensor(path, tensor)
        else:
            self.array = _torch_tensor(path, tensor)
        if tuple(self.array.shape) != (num_rows, head_dim):
            raise ValueError(f"checkpoint tensor {tensor} has shape {list(self.array.shape)}; this "
                             f"layer's table needs [{num_rows}, {head_dim}] (sum of its prime sub-table "
                             "sizes x head_dim): was it trained with another EngramConfig?")

    def rows(self, start: int, stop: int) -> np.ndarray:
        block = self.array[start:stop]
        if not isinstance(block, np.ndarray):  # a torch tensor
            block = block.float().numpy()
        return np.asarray(block, dtype=np.float32)


def _safetensors_tensor(path: Path, name: str) -> np.ndarray:
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > 100 << 20:
            raise ValueError(f"{path} is not a safetensors file (header of {header_len} bytes)")
        header = json.loads(f.read(header_len))
    if name not in header:
        names = [k for k in header if k != "__metadata__"]
        hint = [k for k in names if "engram" in k][:6] or names[:6]
        raise ValueError(f"checkpoint {path} has no tensor {name!r} (some tensors: {', '.join(hint)})")
    info = header[name]
    if info["dtype"] not in _SAFETENSORS_DTYPES:
        raise ValueError(f"tensor {name} has dtype {info['dtype']}; supported: {', '.join(_SAFETENSORS_DTYPES)}")
    dtype = _SAFETENSORS_DTYPES[info["dtype"]]
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - begin != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"tensor {name} in {path}: data size does not match its shape {list(shape)}")
    return np.memmap(path, dtype=dtype, mode="r", offset=8 + header_len + begin, shape=shape)


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
