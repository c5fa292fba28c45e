"""The backend switch: the kernels on CUDA, the references elsewhere, one switch forcing the references."""
import os
import subprocess
import sys

import pytest
import torch

import kernels


def test_auto_uses_references_on_cpu_and_can_be_forced():
    x = torch.zeros(1)
    with kernels.backend("auto"):
        assert kernels.use_triton(x) is False                    # CPU tensors: the references
    with kernels.backend("reference"):
        assert kernels.use_triton(x) is False
        if torch.cuda.is_available():
            assert kernels.use_triton(x.cuda()) is False         # forced off on the GPU too
    if kernels.triton_available():
        with kernels.backend("triton"):
            assert kernels.use_triton(x) is True
    with pytest.raises(ValueError, match="backend must be one of auto, reference, triton"):
        kernels.set_backend("fast")


def test_environment_variable_selects_and_is_validated():
    env = {**os.environ, "ENGRAM_KERNELS": "reference"}
    code = "import kernels; print(kernels.get_backend())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "reference", out.stderr
    out = subprocess.run([sys.executable, "-c", code], env={**env, "ENGRAM_KERNELS": "gpu"},
                         capture_output=True, text=True)
    assert out.returncode != 0 and "ENGRAM_KERNELS must be one of auto, reference, triton" in out.stderr
