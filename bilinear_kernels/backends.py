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
    fused = triton_interaction_kernel(w, v, c)
    if fused is not None:
        return fused
    from .interaction import build_interaction_reference

    return build_interaction_reference


# -- Triton kernels (bilinear_kernels/ops) ---------------------------------------------------------

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_unsupported_reason(*tensors) -> str | None:
    """Why the Triton kernels cannot take these tensors (None entries are ignored), or None when
    they can: Triton installed and not switched off, one dtype among float32/float16/bfloat16,
    one CUDA device, nothing empty. Strides and offsets need no condition: every load is masked
    and strided."""
    present = [t for t in tensors if t is not None]
    if triton_version() is None:
        return "Triton is not installed or BILINEAR_KERNELS_DISABLE_TRITON is set"
    dtypes = {t.dtype for t in present}
    if len(dtypes) != 1:
        return f"the inputs mix dtypes {sorted(map(str, dtypes))}"
    dtype = dtypes.pop()
    if dtype not in TRITON_DTYPES:
        return f"dtype {dtype} is not one of {[str(t) for t in TRITON_DTYPES]}"
    devices = {t.device for t in present}
    if len(devices) != 1:
        return f"the inputs are on several devices {sorted(map(str, devices))}"
    device = devices.pop()
    if device.type != "cuda":
        return f"the inputs are on {device}, not a CUDA device"
    if any(t.numel() == 0 for t in present):
        return "an input is empty"
    needed = (8, 0) if dtype == torch.bfloat16 else (7, 0)  # tensor-core dot support in Triton
    if _cuda_capability(device) < needed:
        return f"{device} has compute capability {_cuda_capability(device)}, the kernels need {needed} for {dtype}"
    return None


@functools.lru_cache(maxsize=None)
def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def bilinear_forward_kernel(x, w, v, p=None, w_bias=None, v_bias=None):
    """The function that computes P((W x + a) ⊙ (V x + b)) for these torch tensors: the fused
    Triton forward (differentiable) where it supports them, else `functional.bilinear_reference`.
    Under autocast the reference runs, so the projections follow autocast's casting rules."""
    if triton_unsupported_reason(x, w, v, p, w_bias, v_bias) is None and not _autocasting(x.device):
        from .ops.bilinear_forward import bilinear_fused

        return bilinear_fused
    from .functional import bilinear_reference

    return bilinear_reference


def _autocasting(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # torch < 2.4 takes no device type and answers for CUDA
        return torch.is_autocast_enabled()


def triton_interaction_kernel(w, v, c):
    """The fused Triton builder of Q where it supports these tensors, else None."""
    if triton_unsupported_reason(w, v, c) is None:
        from .ops.interaction import build_interaction_triton

        return build_interaction_triton
    return None
