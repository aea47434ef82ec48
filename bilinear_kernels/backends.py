"""What is available on this machine (Triton, the compiled extension, CuPy, devices) and whether
the Triton kernels can take given tensors. Which implementation an operation runs is decided next
to the operation (functional.bilinear_forward_kernel, interaction.interaction_kernel), from these
answers; this module imports none of the modules that dispatch, so imports only point down.

Environment switches (set to 1):
  BILINEAR_KERNELS_DISABLE_TRITON     never use the Triton kernels
  BILINEAR_KERNELS_DISABLE_EXTENSION  never load the compiled extension
  BILINEAR_KERNELS_STRICT             a fast path that fails its canary or a call raises instead of
                                      handing its work to its plain-torch twin (fast_path_guard.py)
"""
from __future__ import annotations

import functools
import importlib

import torch

from . import fast_path_guard
from ._env import env_flag


@functools.lru_cache(maxsize=None)
def triton_version() -> str | None:
    if env_flag("BILINEAR_KERNELS_DISABLE_TRITON"):
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
    return env_flag("TRITON_INTERPRET")


def extension_status() -> dict:
    """The compiled extension: built, loaded or why not, cuSOLVER versions (see extension.py)."""
    from .extension import extension_status as status

    return status()


def fast_paths() -> dict:
    """Each fast path: its twin, the switch that keeps it off, and the canary checks this process
    has made, keyed "dtype mode device" (state "passed"/"failed", canary_ms, the canary's error
    and tolerance, what failed); no checks yet means the path has not run in this process."""
    checks = fast_path_guard.states()
    return {
        path.name: {"twin": path.twin, "switch": path.switch,
                    "checks": {f"{c['dtype']} {c['mode']} {c['device']}":
                               {k: v for k, v in c.items() if k not in ("path", "dtype", "mode", "device")}
                               for c in checks if c["path"] == path.name}}
        for path in fast_path_guard.PATHS
    }


def backends() -> dict:
    """A summary of what this installation can use, and how its fast paths fared so far."""
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "triton": triton_version(),
        "triton_interpret": triton_interpreting(),
        "cupy": cupy_version(),
        "extension": extension_status(),
        "strict": fast_path_guard.strict(),
        "fast_paths": fast_paths(),
    }


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
