"""The wire contract (engram_memory.v1) and its generated Python code.

Code is generated from the .proto files with grpcio-tools on first import (or by
`python -m protos`, e.g. during a Docker build) into this package's folder, or into the user cache
when the package folder is read-only; a stamp of the .proto files' sha256 regenerates stale code.
Generated files are never committed.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).parent
PROTO_FILES = ["engram_memory/v1/memory.proto"]


def _digest() -> str:
    h = hashlib.sha256()
    for name in PROTO_FILES:
        h.update((PROTO_ROOT / name).read_bytes())
    return h.hexdigest()


def _fresh(out: Path, digest: str) -> bool:
    stamp = out / "engram_memory" / "v1" / ".stamp"
    return stamp.is_file() and stamp.read_text() == digest


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) on the .proto files into `out`; atomic per file."""
    import grpc_tools
    from grpc_tools import protoc
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *PROTO_FILES]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_FILES}")
        target = out / "engram_memory" / "v1"
        target.mkdir(parents=True, exist_ok=True)
        for pkg in (out / "engram_memory", target):
            (pkg / "__init__.py").touch()
        for f in (Path(tmp) / "engram_memory" / "v1").iterdir():
            os.replace(f, target / f.name)
        (target / ".stamp").write_text(_digest())


def _output_dir() -> Path:
    digest = _digest()
    if os.access(PROTO_ROOT, os.W_OK) or _fresh(PROTO_ROOT, digest):
        candidates = [PROTO_ROOT]
    else:
        candidates = []
    from core.tokenizer import cache_dir
    candidates.append(cache_dir() / f"protos-{digest[:16]}")
    for out in candidates:
        if _fresh(out, digest):
            return out
        try:
            out.mkdir(parents=True, exist_ok=True)
            generate(out)
            return out
        except OSError:
            continue
    raise RuntimeError("cannot write generated protobuf code: neither the protos package folder nor "
                       "the cache directory ($ENGRAM_CACHE_DIR) is writable")


def _load():
    out = str(_output_dir())
    if out not in sys.path:
        sys.path.insert(0, out)  # generated modules import each other as engram_memory.v1.*
    return (importlib.import_module("engram_memory.v1.memory_pb2"),
            importlib.import_module("engram_memory.v1.memory_pb2_grpc"))


pb2, pb2_grpc = _load()
