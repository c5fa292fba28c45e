"""Which implementation runs: the Triton kernels on CUDA tensors, the PyTorch references elsewhere.

One switch forces the references everywhere: the environment variable ENGRAM_KERNELS=reference, or
`set_backend("reference")` (and `set_backend("auto")` to go back). ENGRAM_KERNELS=triton on a CPU
tensor runs the kernels through Triton's interpreter (TRITON_INTERPRET=1 must be set before triton
is imported): slow, for tests of the kernels themselves.
"""
from __future__ import annotations

import contextlib
import os

BACKENDS = ("auto", "reference", "triton")
_choice = os.environ.get("ENGRAM_KERNELS", "auto")
if _choice not in BACKENDS:
    raise ValueError(f"ENGRAM_KERNELS must be one of {', '.join(BACKENDS)}; got {_choice!r}")
_triton_ok: bool | None = None


def triton_available() -> bool:
    global _triton_ok
    if _triton_ok is None:
        try:
            import triton  # noqa: F401
            _triton_ok = True
        except ImportError:
            _triton_ok = False
    return _triton_ok


def set_backend(name: str) -> None:
    global _choice
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    _choice = name


def get_backend() -> str:
    return _choice


@contextlib.contextmanager
def backend(name: str):
    """Run a block with another backend, e.g. `with backend("reference"): ...`."""
    previous = _choice
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def use_triton(tensor) -> bool:
    """True when the kernels should handle a tensor that lives where `tensor` lives."""
    if _choice == "reference" or not triton_available():
        return False
    if _choice == "triton":
        return True
    return tensor.is_cuda
