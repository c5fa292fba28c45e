"""Triton kernels for the GPU hot path, each with a PyTorch reference (arrives with the kernels issue)."""
