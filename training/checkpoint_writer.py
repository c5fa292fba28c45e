"""Checkpoints of a training run: safetensors shards + index (core/checkpoint_format.py), train state, merge.

Every rank writes its file, `model-0000{r+1}-of-0000{W}.safetensors`, holding its rows of each table
under the table's name; rank 0's also holds the dense parameters: layer L's Engram module as
`layers.{L}.engram.*` (the reference's names), the rest as `backbone.*`. Rank 0 writes the index,
whose metadata carries the EngramConfig and BackboneConfig, so `load --from` takes the config from
the checkpoint. The train state (optimizer moments, step) is a torch file per rank beside them.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from core import checkpoint_format as fmt

FORMAT = "engram-memory-train/1"


def checkpoint_name(param: str, engram_layers) -> str:
    """A model parameter's checkpoint name: blocks.{L}.engram.X -> layers.{L}.engram.X, else backbone.X."""
    parts = param.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[2] == "engram" and int(parts[1]) in engram_layers:
        return "layers." + ".".join(parts[1:])
    return "backbone." + param


def dense_tensors(model) -> dict[str, np.ndarray]:
    layers = set(model.engram_config.layer_ids)
    return {checkpoint_name(name, layers): (value.detach().float() if value.is_floating_point() else value.long()).cpu().numpy()
            for name, value in model.state_dict().items()}


def save(out: Path, model, tables: dict, step: int, backbone, engram: bool, train_state: dict) -> Path:
    """Collective: every rank writes its shard and train state; rank 0 the index. Returns the index."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "engram_config": model.engram_config.to_json(), "step": str(step),
            "backbone_config": json.dumps(dataclasses.asdict(backbone)), "engram": str(engram).lower()}
    tensors = {fmt.TABLE_TENSOR.format(L=L): t.weight.cpu().numpy() for L, t in tables.items()}
    dense = dense_tensors(model) if rank == 0 else {}
    tensors.update(dense)
    fmt.write(out / fmt.shard_file(rank, world), tensors, {**meta, "rank": str(rank)})
    torch.save({**train_state, "tables": {L: t.state() for L, t in tables.items()}},
               out / f"train_state-{rank:05d}.pt")
    if dist.is_initialized():
        dist.barrier()
    index = out / fmt.INDEX_NAME
    if rank == 0:
        first = fmt.shard_file(0, world)
        row_shards = {fmt.TABLE_TENSOR.format(L=L): [
            {"file": fmt.shard_file(r, world), "start": min(r * t.per, t.num_rows), "stop": min((r + 1) * t.per, t.num_rows)}
            for r in range(world)] for L, t in tables.items()}
        body = {"metadata": {**meta, "world_size": str(world)},
                "weight_map": {name: first for name in dense}, "row_shards": row_shards}
        tmp = index.with_name(index.name + ".tmp")
        tmp.write_text(json.dumps(body, indent=1))
        tmp.replace(index)
    if dist.is_initialized():
        dist.barrier()
    return index


def load_train_state(out: Path, rank: int) -> dict:
    path = out / f"train_state-{rank:05d}.pt"
    if not path.is_file():
        raise ValueError(f"--resume: {path} does not exist (no checkpoint of this world size in --out)")
    return torch.load(path, map_location="cpu", weights_only=True)


def merge(index_path: str | Path, out_path: str | Path) -> Path:
    """One safetensors file with every tensor whole (the tables' shards stitched in row order)."""
    index_path, out_path = Path(index_path), Path(out_path)
    index = fmt.read_index(index_path)
    tensors = {name: fmt.whole(index_path, name, index) for name in (*index["weight_map"], *index["row_shards"])}
    meta = {k: v for k, v in index["metadata"].items() if k != "world_size"}
    fmt.write(out_path, tensors, meta)
    return out_path


@dataclass
class MergeConfig:
    index: str = field(default="", metadata={"flag": "--from", "required": True, "metavar": "INDEX",
                                             "help": "the checkpoint's model.safetensors.index.json"})
    out: str = field(default="", metadata={"required": True, "help": "the .safetensors file to write"})

    def __post_init__(self):
        if not self.out.endswith(".safetensors"):
            raise ValueError(f"--out must name a .safetensors file (got {self.out!r})")


def run_merge(cfg: MergeConfig) -> int:
    path = merge(cfg.index, cfg.out)
    print(f"wrote {path} ({path.stat().st_size / 2**20:,.1f} MiB)")
    return 0
