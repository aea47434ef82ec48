"""The compiled extension bilinear_kernels._C (sources in csrc/): loading it and what it reports.

The extension is optional. It is loaded once, on first use, in try/except; whatever goes wrong
(not built, BILINEAR_KERNELS_DISABLE_EXTENSION=1, libcusolver not found) leaves the package on its
plain-torch paths and is reported by `extension_status()` (part of `bilinear_kernels.backends()`).

libcusolver is found through the module's rpath (set by setup.py); where that does not reach it (an
editable install, a venv beside the nvidia wheels), it is preloaded from any nvidia wheel on
sys.path and the import is tried again, so no LD_LIBRARY_PATH is needed.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import importlib
import importlib.util
import os
import sys
from types import ModuleType

from ._env import env_flag

DISABLE_SWITCH = "BILINEAR_KERNELS_DISABLE_EXTENSION"
MODULE = "bilinear_kernels._C"
# where nvidia wheels keep libcusolver, relative to site-packages: CUDA 13, then CUDA 12 layout
WHEEL_LIBRARY_DIRS = ("nvidia/cu13/lib", "nvidia/cusolver/lib")


def _wheel_libcusolver() -> list[str]:
    """libcusolver.so.N files of nvidia wheels on sys.path, in sys.path order."""
    found = []
    for entry in sys.path:
        for sub in WHEEL_LIBRARY_DIRS:
            found += sorted(glob.glob(os.path.join(entry or ".", sub, "libcusolver.so.[0-9]*")))
    return list(dict.fromkeys(os.path.realpath(p) for p in found))


def _built() -> bool:
    try:
        return importlib.util.find_spec(MODULE) is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ModuleType | None, str | None]:
    """(module, None) or (None, why it is unavailable)."""
    if env_flag(DISABLE_SWITCH):
        return None, f"disabled by {DISABLE_SWITCH}=1"
    if not _built():
        return None, ("not built (install with nvcc and the cuSOLVER headers available, or run "
                      "`python setup.py build_ext --inplace`)")
    try:
        return importlib.import_module(MODULE), None
    except ImportError as first:
        error = first
    # The loader matches an already loaded library by its soname, so a preloaded wheel copy
    # satisfies the module's dependency on libcusolver.so.N.
    for path in _wheel_libcusolver():
        try:
            ctypes.CDLL(path)
            return importlib.import_module(MODULE), None
        except (OSError, ImportError) as exc:
            error = exc
    return None, f"built but cannot be loaded: {error}"


def load() -> ModuleType | None:
    """The extension module, or None when it is unavailable."""
    return _load()[0]


def unavailable_reason() -> str | None:
    return _load()[1]


def require() -> ModuleType:
    """The extension module; RuntimeError saying why when it is unavailable."""
    module, reason = _load()
    if module is None:
        raise RuntimeError(f"the compiled extension {MODULE} is unavailable: {reason}")
    return module


def _version(code: int, cuda_runtime: bool = False) -> str:
    # CUSOLVER_VERSION is major*1000 + minor*100 + patch, CUDART_VERSION major*1000 + minor*10
    if cuda_runtime:
        return f"{code // 1000}.{code % 1000 // 10}"
    return f"{code // 1000}.{code % 1000 // 100}.{code % 100}"


@functools.lru_cache(maxsize=None)
def gpu_error() -> str | None:
    """Why the extension cannot reach a GPU (no driver, no device), or None when it can."""
    module = require()
    try:
        module.device_count()
    except RuntimeError as exc:
        return str(exc)
    return None


def extension_status() -> dict:
    """What `bilinear_kernels.backends()` reports about the compiled extension."""
    module, reason = _load()
    status = {"built": _built(), "loaded": module is not None, "error": reason}
    if module is not None:
        try:
            runtime = _version(module.cusolver_version())
        except RuntimeError as exc:
            runtime = f"unknown ({exc})"
        status.update(
            path=module.__file__,
            cusolver_build=_version(module.CUSOLVER_BUILD_VERSION),
            cusolver_runtime=runtime,
            cuda_runtime_build=_version(module.CUDART_BUILD_VERSION, cuda_runtime=True),
            syev_batched=bool(module.HAS_SYEV_BATCHED),
        )
    return status
