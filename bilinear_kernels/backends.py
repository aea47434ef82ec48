"""What is available on this machine (Triton, the compiled extension, CuPy, devices) and which
implementation each operation uses. Every fast path has a plain-torch twin chosen when the fast
path does not support the inputs or is switched off.

Environment switches (set to 1):
  BILINEAR_KERNELS_DISABLE_TRITON     never use the Triton kernels
  BILINEAR_KERNELS_DISABLE_EXTENSION  never load the compiled extension
"""
from __future__ import annotations

import functools
import importlib
import os

import torch


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def triton_version() -> str | None:
    if _env_flag("BILINEAR_KERNELS_DISABLE_TRITON"):
        return None
    try:
        return importlib.import_module("triton").__version__
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None


@functools.lru_cache(maxsize=None)
def cupy_version() -> str | None:
    try:
        return importlib.import_module("cupy").__version__
    except Exception:  # noqa: BLE001
        return None


def triton_interpreting() -> bool:
    return _env_flag("TRITON_INTERPRET")


def extension_status() -> dict:
    """The compiled extension: built, loaded or why not, cuSOLVER versions (see extension.py)."""
    from .extension import extension_status as status

    return status()


def backends() -> dict:
    """A summary of what this installation can use."""
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "triton": triton_version(),
        "triton_interpret": triton_interpreting(),
        "cupy": cupy_version(),
        "extension": extension_status(),
    }


def interaction_kernel(w: torch.Tensor, v: torch.Tensor, c: torch.Tensor):
    """The function that builds Q for these inputs."""
    from .interaction import build_interaction_reference

    return build_interaction_reference
