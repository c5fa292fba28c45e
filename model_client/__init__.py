"""What a model worker imports: config, hashing, the Engram module and (later) the row cache.

The torch-free parts (config, geometry, tokenizer, hasher on numpy) import eagerly; the torch parts
load on first use so the memory service can share this package without torch installed.
"""
from .config import EngramConfig, PRESETS, ROW_DTYPES
from .geometry import TableGeometry
from .hasher import LookbackState, NgramHasher
from .tokenizer import CompressedTokenizer

_LAZY = {
    "Engram": "model_client.engram",
    "ShortConv": "model_client.engram",
    "MultiHeadEmbedding": "model_client.engram",
    "LocalTableBackend": "model_client.table_backend",
    "TableBackend": "model_client.table_backend",
    "MemoryClient": "model_client.memory_client",
    "MemoryServiceError": "model_client.memory_client",
}

__all__ = ["EngramConfig", "PRESETS", "ROW_DTYPES", "TableGeometry", "LookbackState", "NgramHasher",
           "CompressedTokenizer", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model_client' has no attribute {name!r}")
