"""A model `engram-memory train` wrote, loaded for inference: the demo backbone, its Engram layers and,
unless the tables are served remotely, their rows (core/checkpoint_format.py names every tensor).

`load_trained(path)` reads a checkpoint's index or merged .safetensors: the configs from its
metadata, every dense tensor by name (`backbone.X` -> X, `layers.{L}.engram.X` -> blocks.{L}.engram.X),
each table's rows into a LocalTableBackend (`local_tables=False`: the caller attaches remote
backends, and the rows stay in the memory service). A tensor missing, extra or of another shape is
refused with its name.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from core import checkpoint_format as fmt
from core.config import EngramConfig
from core.geometry import TableGeometry
from core.manifest import table_name
from core.row_format import RowFormat

from .demo_model import BackboneConfig, DemoModel
from .table_backend import LocalTableBackend


@dataclasses.dataclass
class TrainedCheckpoint:
    path: Path
    engram_config: EngramConfig
    backbone: BackboneConfig
    engram: bool             # trained with its Engram layers
    tensors: dict            # name -> numpy array (memory-mapped)


def read_checkpoint(path: str | Path) -> TrainedCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--checkpoint {path} does not exist")
    meta = fmt.metadata(path)
    if meta.get("format") != "engram-memory-train/1":
        raise ValueError(f"--checkpoint {path}: not written by `engram-memory train` (format {meta.get('format')!r})")
    config = EngramConfig.from_dict(json.loads(meta["engram_config"]))
    backbone = BackboneConfig(**json.loads(meta["backbone_config"]))
    tensors = {}
    if path.name.endswith(".json"):
        index = fmt.read_index(path)
        tensors = {name: fmt.whole(path, name, index) for name in (*index["weight_map"], *index["row_shards"])}
    else:
        header, start = fmt.read_header(path)
        tensors = {name: fmt.tensor(path, name, header, start) for name in header if name != "__metadata__"}
    return TrainedCheckpoint(path, config, backbone, meta.get("engram") == "true", tensors)


def load_trained(path: str | Path, local_tables: bool = True, backends: dict | None = None,
                 row_dtype: str | None = None) -> DemoModel:
    ckpt = read_checkpoint(path)
    config = ckpt.engram_config if row_dtype is None else ckpt.engram_config.replace(row_dtype=row_dtype)
    geometry, row_format = TableGeometry.from_config(config), RowFormat(config.row_dtype, config.head_dim)
    backends = dict(backends or {})
    tables = {L: fmt.TABLE_TENSOR.format(L=L) for L in config.layer_ids}
    if ckpt.engram and local_tables:
        for L, name in tables.items():
            if name not in ckpt.tensors:
                raise ValueError(f"--checkpoint {path} has no tensor {name}")
            rows = ckpt.tensors[name]
            if rows.shape != (geometry.rows(L), config.head_dim):
                raise ValueError(f"--checkpoint {path}: tensor {name} has shape {list(rows.shape)}, the config "
                                 f"needs [{geometry.rows(L)}, {config.head_dim}]")
            backends[L] = LocalTableBackend.from_values(np.asarray(rows), row_format)
    model = DemoModel(ckpt.backbone, config, backends if ckpt.engram else None)
    if not ckpt.engram:
        for block in model.blocks:
            block.engram = None
    state = model.state_dict()
    given = {_param_name(n): t for n, t in ckpt.tensors.items() if n not in tables.values()}
    missing, extra = sorted(set(state) - set(given)), sorted(set(given) - set(state))
    if missing or extra:
        raise ValueError(f"--checkpoint {path}: tensors missing {missing[:4]} / unexpected {extra[:4]} for this model")
    for name, value in given.items():
        if tuple(value.shape) != tuple(state[name].shape):
            raise ValueError(f"--checkpoint {path}: tensor {name} has shape {list(value.shape)}, the model's is "
                             f"{list(state[name].shape)}")
        state[name] = torch.from_numpy(np.array(value)).to(state[name].dtype)
    model.load_state_dict(state)
    return model.eval()


def _param_name(name: str) -> str:
    if name.startswith("backbone."):
        return name[len("backbone."):]
    if name.startswith("layers."):
        return "blocks." + name[len("layers."):]
    return name


def check_served_rows(client, path: str | Path, config: EngramConfig, samples: int = 64) -> None:
    """Refuse a service whose tables are not this checkpoint's (the same geometry holding other rows,
    e.g. seeded random ones, passes `client.check`): `samples` rows spread over each table, read
    through the service, must equal the checkpoint's rows stored as config.row_dtype, byte for byte."""
    ckpt = read_checkpoint(path)
    row_format = RowFormat(config.row_dtype, config.head_dim)
    for layer in config.layer_ids:
        rows = ckpt.tensors.get(fmt.TABLE_TENSOR.format(L=layer))
        if rows is None:
            raise ValueError(f"--checkpoint {path} has no table for Engram layer {layer} (trained without Engram?)")
        ids = np.unique(np.linspace(0, rows.shape[0] - 1, samples).astype(np.int64))
        served = client.lookup(table_name(layer), ids)
        expected = row_format.encode(np.asarray(rows[ids], dtype=np.float32))
        differ = np.flatnonzero((served != expected).any(axis=1))
        if differ.size:
            raise ValueError(f"the service's table {table_name(layer)} does not hold the rows of --checkpoint {path} "
                             f"({differ.size} of {ids.size} sampled rows differ, the first row {ids[differ[0]]}); "
                             f"publish them with `engram-memory load --from {path}`")
