"""Batched symmetric eigh on cuSOLVER through the compiled extension (csrc/), for torch tensors and
CuPy arrays on a CUDA device; results come back in the caller's framework.

The framework of the input does the allocating: one copy of the input that the solver overwrites
with the eigenvectors, the eigenvalues, cuSOLVER's info array and the workspace, all on the
caller's current device and stream, which is the stream the solver runs on. The call returns when
the results are ready (it reads the info array back to report failures).

The plain-torch twin is torch.linalg.eigh: same conventions (lower triangle read, eigenvalues
ascending, eigenvectors as columns, a view whose last two dimensions are transposed).
"""
from __future__ import annotations

import math

import torch

from .. import extension

ALGORITHMS = ("auto", "syev_batched", "syevj_batched", "syevd")
DTYPES = ("float32", "float64")


def available() -> bool:
    """Whether the extension is loaded and sees a GPU (the dense path's test for using it)."""
    return extension.load() is not None and extension.gpu_error() is None


def eigh(a, *, algorithm: str = "auto", max_sweeps: int | None = None, check_finite: bool = True):
    """Eigenvalues (..., n) ascending and eigenvectors (..., n, n) as columns of the symmetric
    matrices a (..., n, n), read from their lower triangle.

    a             a torch tensor or CuPy array on a CUDA device, float32 or float64
    algorithm     "auto" (the rule in csrc/eigh.cpp), "syev_batched" (cusolverDnXsyevBatched),
                  "syevj_batched" (batched Jacobi) or "syevd" (one cusolverDnXsyevd per matrix)
    max_sweeps    cap on Jacobi sweeps for "syevj_batched" (None: cuSOLVER's default)
    check_finite  refuse input with NaN/Inf, naming the first such matrix (one pass over a)
    """
    return _solve(a, True, algorithm, max_sweeps, check_finite)


def eigvalsh(a, *, algorithm: str = "auto", max_sweeps: int | None = None, check_finite: bool = True):
    """Eigenvalues (..., n) ascending of the symmetric matrices a (..., n, n); see `eigh`."""
    return _solve(a, False, algorithm, max_sweeps, check_finite)[0]


def _solve(a, vectors, algorithm, max_sweeps, check_finite):
    adapter = _adapter(a)
    shape = tuple(a.shape)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(f"a must be a batch of square matrices (..., n, n), got shape {shape}")
    if adapter.dtype_name not in DTYPES:
        raise TypeError(f"a must be float32 or float64, got {a.dtype}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if max_sweeps is not None and (isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int) or max_sweeps < 1):
        raise ValueError(f"max_sweeps must be a positive int or None, got {max_sweeps!r}")
    ext = extension.require()
    if extension.gpu_error() is not None:
        raise RuntimeError(f"cuSOLVER eigh cannot run: {extension.gpu_error()}")
    if not adapter.on_cuda:
        raise ValueError(f"a must be on a CUDA device, got {adapter.device_name}")

    n, batch_shape = shape[-1], shape[:-2]
    batch = math.prod(batch_shape)
    with adapter.device_scope():
        if check_finite and batch * n > 0:
            adapter.check_finite(batch, n)
        buf = adapter.copy_matrices(batch, n)
        w = adapter.empty((batch, n), adapter.dtype)
        if batch * n > 0:
            info = adapter.empty((batch,), adapter.int32)
            common = dict(device=adapter.device_index, stream=adapter.stream, dtype=adapter.dtype_name, n=n,
                          batch=batch, vectors=vectors, algorithm=algorithm, max_sweeps=max_sweeps or 0)
            nbytes = ext.workspace_bytes(a=adapter.ptr(buf), w=adapter.ptr(w), **common)
            work = adapter.empty((max(nbytes, 1),), adapter.uint8)
            ext.eigh(a=adapter.ptr(buf), w=adapter.ptr(w), info=adapter.ptr(info), work=adapter.ptr(work),
                     work_bytes=nbytes, **common)
    values = w.reshape(*batch_shape, n)
    if not vectors:
        return values, None
    # the solver leaves eigenvectors as rows of the row-major buffer: hand back the transposed view
    return values, adapter.transpose(buf.reshape(*batch_shape, n, n))


def _adapter(a):
    if isinstance(a, torch.Tensor):
        return _TorchArrays(a)
    if type(a).__module__.split(".")[0] == "cupy":
        return _CupyArrays(a)
    raise TypeError(f"a must be a torch tensor or a CuPy array on a CUDA device, got {type(a).__name__}")


class _TorchArrays:
    """Allocation, copies and pointers for torch tensors (current stream of the tensor's device)."""

    int32, uint8 = torch.int32, torch.uint8

    def __init__(self, a: torch.Tensor):
        self.a, self.dtype = a, a.dtype
        self.dtype_name = str(a.dtype).replace("torch.", "")
        self.on_cuda = a.is_cuda
        self.device_name = str(a.device)

    @property
    def device_index(self) -> int:
        return self.a.device.index if self.a.device.index is not None else torch.cuda.current_device()

    @property
    def stream(self) -> int:
        return torch.cuda.current_stream(self.a.device).cuda_stream

    def device_scope(self):
        return torch.cuda.device(self.a.device)

    def empty(self, shape, dtype):
        return torch.empty(shape, dtype=dtype, device=self.a.device)

    def copy_matrices(self, batch: int, n: int):
        buf = self.empty((batch, n, n), self.dtype)
        buf.copy_(self.a.detach().reshape(batch, n, n))
        return buf

    def check_finite(self, batch: int, n: int):
        bad = ~torch.isfinite(self.a.detach().reshape(batch, n * n)).all(dim=1)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise ValueError(f"a has NaN or Inf entries in {int(bad.sum())} matrix(es), first at batch index {first}")

    @staticmethod
    def ptr(x) -> int:
        return x.data_ptr()

    @staticmethod
    def transpose(x):
        return x.mT


class _CupyArrays:
    """Allocation, copies and pointers for CuPy arrays (current stream of the array's device)."""

    def __init__(self, a):
        import cupy

        self.cupy, self.a, self.dtype = cupy, a, a.dtype
        self.int32, self.uint8 = cupy.int32, cupy.uint8
        self.dtype_name = str(a.dtype)
        self.on_cuda = True
        self.device_name = f"cuda:{a.device.id}"

    @property
    def device_index(self) -> int:
        return self.a.device.id

    @property
    def stream(self) -> int:
        return self.cupy.cuda.get_current_stream().ptr

    def device_scope(self):
        return self.cupy.cuda.Device(self.a.device.id)

    def empty(self, shape, dtype):
        return self.cupy.empty(shape, dtype=dtype)

    def copy_matrices(self, batch: int, n: int):
        return self.cupy.array(self.a.reshape(batch, n, n), dtype=self.dtype, order="C", copy=True)

    def check_finite(self, batch: int, n: int):
        bad = ~self.cupy.isfinite(self.a.reshape(batch, n * n)).all(axis=1)
        if bool(bad.any()):
            first = int(self.cupy.flatnonzero(bad)[0])
            raise ValueError(f"a has NaN or Inf entries in {int(bad.sum())} matrix(es), first at batch index {first}")

    @staticmethod
    def ptr(x) -> int:
        return x.data.ptr

    @staticmethod
    def transpose(x):
        return x.swapaxes(-1, -2)
