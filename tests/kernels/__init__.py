"""Each Triton kernel against its PyTorch reference: through Triton's interpreter on CPU (CI), and
compiled on a CUDA GPU where one is present (the `cuda` cases skip elsewhere).

The interpreter must be chosen before triton is first imported: tests/conftest.py sets
TRITON_INTERPRET=1 when there is no GPU."""
import importlib.util

import pytest
import torch

INTERPRETED = importlib.util.find_spec("triton") is not None and not torch.cuda.is_available()
HAS_CUDA = torch.cuda.is_available()

# where the kernels run: CPU tensors through the interpreter, or the GPU
DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRETED, reason="needs triton")),
           pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA"))]
