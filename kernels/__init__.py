"""Triton kernels for the GPU hot path, each with a PyTorch reference that runs anywhere and is the
oracle in tests:

    hashing.hash_layers    every Engram layer's indices and global row ids in one launch
    cache.probe / insert   the device RowCache's batch operations
    gather.gather_rows     cache and fetched rows -> the Engram input, dequantizing fp8
    gate.gate              RMSNorms, dot product, signed sqrt, sigmoid, scaled value

`backend.use_triton(t)` chooses: the kernels for CUDA tensors, the references elsewhere;
ENGRAM_KERNELS=reference (or backend.set_backend("reference")) forces the references. The kernel
modules import triton, so import them only where use_triton said yes.
"""
from .backend import backend, get_backend, set_backend, triton_available, use_triton

__all__ = ["backend", "get_backend", "set_backend", "triton_available", "use_triton"]
