"""Fixtures shared by the kernel tests."""
import importlib

import pytest
import torch

backends = importlib.import_module("bilinear_kernels.backends")  # the package exports a function of that name


@pytest.fixture
def triton_disabled(monkeypatch):
    """BILINEAR_KERNELS_DISABLE_TRITON=1 for one test; backends caches its Triton probe, so the
    cache is cleared on the way in and out."""
    monkeypatch.setenv("BILINEAR_KERNELS_DISABLE_TRITON", "1")
    backends.triton_version.cache_clear()
    yield
    monkeypatch.undo()
    backends.triton_version.cache_clear()


@pytest.fixture
def no_tf32():
    """References on the GPU in true fp32: no TF32 in torch's matmuls (the kernels follow the same
    setting through torch.get_float32_matmul_precision)."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]
