"""Conversion between the array types users hand us (torch, NumPy, CuPy) and torch tensors.

Everything inside the package works on torch tensors; results go back in the caller's framework.
"""
from __future__ import annotations

import numpy as np
import torch

TORCH, NUMPY, CUPY = "torch", "numpy", "cupy"


def _is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def framework_of(x, name: str | None = None) -> str:
    if isinstance(x, torch.Tensor):
        return TORCH
    if isinstance(x, np.ndarray):
        return NUMPY
    if _is_cupy(x):
        return CUPY
    raise TypeError(_unsupported_type(x, name))


def _unsupported_type(x, name: str | None) -> str:
    hint = " (convert it with np.asarray or torch.tensor)" if isinstance(x, (list, tuple)) else ""
    wanted = "expected" if name is None else f"{name} must be"
    return f"{wanted} a torch tensor, NumPy array or CuPy array, got {type(x).__name__}{hint}"


def numpy_to_torch(a: np.ndarray, name: str, kinds: str = "f") -> torch.Tensor:
    """A torch view of a NumPy array whose dtype kind is one of `kinds` ("f" float, "i"/"u"
    integer). Non-native byte order is converted (exactly); dtypes torch cannot hold are refused
    by name: long double, complex, object, strings."""
    dt = a.dtype
    if dt.kind not in kinds:
        wanted = "a floating-point" if kinds == "f" else "an integer or floating-point"
        raise TypeError(f"{name} must have {wanted} dtype, got NumPy dtype {dt}")
    if dt.kind == "f" and dt.itemsize > 8:
        raise TypeError(f"{name} has NumPy dtype {dt} (long double), which torch cannot hold; convert it "
                        "with .astype(np.float64) if float64 precision is enough")
    if not dt.isnative:
        a = a.astype(dt.newbyteorder("="))
    return torch.from_numpy(np.ascontiguousarray(a))


def check_tensor_storage(t: torch.Tensor, name: str) -> None:
    """Refuse tensors that hold no dense data: meta (shape only) and sparse layouts."""
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (a shape with no data); give a tensor that holds values")
    if t.layout != torch.strided:
        raise TypeError(f"{name} has layout {t.layout}; give a dense tensor ({name}.to_dense())")


def as_tensor(x, name: str) -> torch.Tensor:
    """A torch view of `x` (no copy where the framework allows it), checked to be a float array."""
    if isinstance(x, torch.Tensor):
        t = x
        check_tensor_storage(t, name)
    elif isinstance(x, np.ndarray):
        t = numpy_to_torch(x, name)
    elif _is_cupy(x):
        t = torch.from_dlpack(x)
    else:
        raise TypeError(_unsupported_type(x, name))
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    if t.numel() == 0:
        return
    if t.is_floating_point():
        # min and max propagate NaN and hold any ±Inf: two reductions, no (n,) mask to write
        # (about 15× faster than isfinite().all() on a 1024 × 16384 basis)
        low, high = torch.aminmax(t)
        if bool(torch.isfinite(low) & torch.isfinite(high)):
            return
    elif not t.is_complex():
        return  # integers and booleans are finite
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")


def to_framework(t: torch.Tensor, framework: str):
    """Hand a result tensor back in the caller's framework."""
    if framework == TORCH:
        return t
    if framework == NUMPY:
        return t.detach().cpu().numpy()
    if framework == CUPY:
        import cupy

        return cupy.from_dlpack(t.detach().contiguous())
    raise ValueError(f"unknown framework {framework!r}")


def working_dtype(dtype: torch.dtype, override=None) -> torch.dtype:
    """The precision work is done in: the weights' own, half precision upcast to float32."""
    if override is not None:
        if isinstance(override, str):
            override = getattr(torch, override, None)
        if override not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {override}")
        return override
    return torch.float64 if dtype == torch.float64 else torch.float32
