"""What a model worker imports: the hasher, the Engram module, the row cache and tiers, the
prefetcher, MemoryClient and ClusterClient, and the worker loop.

EngramConfig, TableGeometry and CompressedTokenizer live in core/ and are re-exported here. The
torch-free parts import eagerly; the torch parts load on first use, so a client that only looks rows
up (MemoryClient, `engram-memory stats`) needs no torch. Depends on core/, protos/ and kernels/,
never on memory_service/.
"""
from core.config import PRESETS, ROW_DTYPES, EngramConfig
from core.geometry import TableGeometry
from core.tokenizer import CompressedTokenizer

from .hasher import LookbackState, NgramHasher

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
