"""The checkpoint format that `engram-memory train` writes and `load --from` reads: safetensors.

A safetensors file is an 8-byte little-endian header length, a JSON header ({name: {dtype, shape,
data_offsets}}, plus "__metadata__": {str: str}) and the raw tensors; written and parsed here with
numpy alone, so the memory service reads checkpoints without torch.

Names are the reference's (engram_demo_v1.py): layer L's Engram parameters are
`layers.{L}.engram.<name inside the Engram module>`, its table `TABLE_TENSOR`; the backbone's are
`backbone.<name>`. The metadata holds the EngramConfig ("engram_config", JSON) the tables were
trained with. A sharded checkpoint is one file per training process plus an index
(`INDEX_NAME`): {"metadata": {...}, "weight_map": {name: file}} for whole tensors, as Hugging Face's
index, and "row_shards": {table name: [{"file", "start", "stop"}, ...]} for the tables, which
are split by rows across the processes (each file holds its rows [start, stop) under the table's
name). `merge` stitches them into one file.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

TABLE_TENSOR = "layers.{L}.engram.multi_head_embedding.embedding.weight"
INDEX_NAME = "model.safetensors.index.json"
DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16), "F64": np.dtype("<f8"),
          "I64": np.dtype("<i8")}
_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 << 20


class CheckpointError(ValueError):
    """A checkpoint that is not what it claims to be; the message names the file and tensor."""


def shard_file(rank: int, world: int) -> str:
    return f"model-{rank + 1:05d}-of-{world:05d}.safetensors"


def write(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Tensors (numpy, C order) to one safetensors file, written to a temporary name and renamed."""
    header, offset = {"__metadata__": {k: str(v) for k, v in metadata.items()}}, 0
    arrays = {}
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if array.dtype not in _NAMES:
            raise CheckpointError(f"tensor {name}: dtype {array.dtype} has no safetensors name")
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        arrays[name], offset = array, offset + array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for array in arrays.values():
            f.write(array.tobytes())
    tmp.replace(path)


def read_header(path: str | Path) -> tuple[dict, int]:
    """(the JSON header, "__metadata__" included; the offset where the tensors' data starts)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER or 8 + length > size:
            raise CheckpointError(f"{path} is not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    return header, 8 + length


def tensor(path: str | Path, name: str, header: dict | None = None, start: int | None = None) -> np.ndarray:
    """One tensor, memory-mapped read-only, checked against the file's size."""
    path = Path(path)
    if header is None:
        header, start = read_header(path)
    if name not in header or name == "__metadata__":
        names = [k for k in header if k != "__metadata__"]
        hint = [k for k in names if "engram" in k][:6] or names[:6]
        raise CheckpointError(f"checkpoint {path} has no tensor {name!r} (some tensors: {', '.join(hint)})")
    info = header[name]
    if not isinstance(info, dict) or info.get("dtype") not in DTYPES:
        raise CheckpointError(f"tensor {name} in {path}: dtype {info.get('dtype') if isinstance(info, dict) else info!r}"
                              f" is not one of {', '.join(DTYPES)}")
    dtype, shape = DTYPES[info["dtype"]], tuple(info.get("shape", ()))
    begin, end = info.get("data_offsets", (0, -1))
    if any(not isinstance(x, int) or x < 0 for x in (*shape, begin, end)):
        raise CheckpointError(f"tensor {name} in {path}: bad shape or offsets")
    if end - begin != int(np.prod(shape)) * dtype.itemsize or start + end > path.stat().st_size:
        raise CheckpointError(f"tensor {name} in {path}: data size does not match its shape {list(shape)}")
    if not shape or 0 in shape:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)


def metadata(path: str | Path) -> dict[str, str]:
    """A checkpoint's metadata: a safetensors file's, or an index's."""
    path = Path(path)
    if path.name.endswith(".json"):
        return read_index(path)["metadata"]
    meta = read_header(path)[0].get("__metadata__", {})
    return meta if isinstance(meta, dict) else {}


def read_index(path: str | Path) -> dict:
    path = Path(path)
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint index {path}: {e}") from None
    if not isinstance(index, dict) or not isinstance(index.get("weight_map", {}), dict):
        raise CheckpointError(f"checkpoint index {path}: expected {{metadata, weight_map, row_shards}}")
    index.setdefault("metadata", {})
    index.setdefault("row_shards", {})
    for name, parts in index["row_shards"].items():
        stop = 0
        for part in parts:  # each shard a file beside the index, the ranges tiling [0, rows)
            file = part.get("file", "") if isinstance(part, dict) else ""
            if Path(file).name != file or not file.endswith(".safetensors"):
                raise CheckpointError(f"checkpoint index {path}: {name} names shard file {file!r}, which is "
                                      "not a .safetensors file beside the index")
            if part.get("start") != stop or not isinstance(part.get("stop"), int) or part["stop"] < stop:
                raise CheckpointError(f"checkpoint index {path}: the row shards of {name} do not tile its rows "
                                      f"(a shard starts at {part.get('start')!r}, expected {stop})")
            stop = part["stop"]
    for name, file in index["weight_map"].items():
        if not isinstance(file, str) or Path(file).name != file:
            raise CheckpointError(f"checkpoint index {path}: {name} is in {file!r}, not a file beside the index")
    return index


def index_parts(index_path: str | Path, name: str, index: dict | None = None) -> list[tuple[int, np.ndarray]]:
    """[(first row, array)] of tensor `name` of a sharded checkpoint, in row order: a whole tensor is
    one part; a table's row shards are checked against the rows the index gives them."""
    index_path = Path(index_path)
    index = index or read_index(index_path)
    if name in index["weight_map"]:
        return [(0, tensor(index_path.parent / index["weight_map"][name], name))]
    if name not in index["row_shards"]:
        tables = ", ".join(list(index["row_shards"])[:6]) or "none"
        raise CheckpointError(f"checkpoint {index_path} has no tensor {name!r} (tables: {tables})")
    parts = []
    for part in index["row_shards"][name]:
        array = tensor(index_path.parent / part["file"], name)
        if not array.shape or array.shape[0] != part["stop"] - part["start"]:
            raise CheckpointError(f"checkpoint tensor {name} in {part['file']} has shape {list(array.shape)}; the "
                                  f"index gives it rows [{part['start']}, {part['stop']})")
        parts.append((part["start"], array))
    return parts


def whole(index_path: str | Path, name: str, index: dict | None = None) -> np.ndarray:
    """Tensor `name` of a sharded checkpoint in one array (row shards concatenated)."""
    parts = index_parts(index_path, name, index)
    return parts[0][1] if len(parts) == 1 else np.concatenate([array for _, array in parts])


def files(path: str | Path) -> list[Path]:
    """The files a checkpoint is made of: the index and its shards, or the one file."""
    path = Path(path)
    if not path.name.endswith(".json"):
        return [path]
    index = read_index(path)
    named = {*index["weight_map"].values(), *(p["file"] for parts in index["row_shards"].values() for p in parts)}
    return [path, *(path.parent / name for name in sorted(named))]


def fingerprint(path: str | Path) -> str:
    """sha256 over a checkpoint's files (name, then bytes): what identifies the rows it holds; a
    retrained checkpoint at the same path gets another."""
    import hashlib
    digest = hashlib.sha256()
    for file in files(path):
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(16 << 20):
                digest.update(block)
    return digest.hexdigest()


def config_for(name: str, checkpoint: str):
    """The EngramConfig to use with a checkpoint: --config, else the one the checkpoint records,
    else the demo preset; both given, they must agree (but for row_dtype, a storage choice)."""
    from .config import EngramConfig
    trained = None
    if checkpoint and Path(checkpoint).is_file() and checkpoint.endswith((".json", ".safetensors")):
        recorded = metadata(checkpoint).get("engram_config")
        if recorded:
            trained = EngramConfig.from_dict(json.loads(recorded))
    if not name:
        return trained or EngramConfig.preset("demo")
    chosen = EngramConfig.load(name)
    if trained is not None:
        differ = [k for k, v in trained.to_dict().items() if k != "row_dtype" and chosen.to_dict()[k] != v]
        if differ:
            detail = "; ".join(f"{k}: checkpoint {trained.to_dict()[k]!r}, --config {chosen.to_dict()[k]!r}"
                               for k in differ)
            raise ValueError(f"--config {name} differs from the config checkpoint {checkpoint} was trained with "
                             f"({detail}); leave --config out to use the checkpoint's")
    return chosen
