"""Dense path: form Q chunk by chunk, batched symmetric eigh, select.

`eigh` is the dispatch point for batched eigensolvers; the plain-torch twin is torch.linalg.eigh.
Backends: "torch" (torch.linalg.eigh), "cusolver" (the compiled extension's batched cuSOLVER
solver, solvers/cusolver.py), "auto" (cusolver for float32/float64 CUDA tensors when the extension
is loaded and no gradient is wanted, torch otherwise).
"""
from __future__ import annotations

import torch

from . import cusolver
from .selection import select

EIGH_BACKENDS = ("auto", "torch", "cusolver")


def eigh_reference(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched eigh in plain torch: eigenvalues ascending, eigenvectors as columns."""
    return torch.linalg.eigh(q)


def check_backend(backend: str, device: torch.device, name: str = "eigh_backend") -> None:
    """Refuse an unknown backend, or "cusolver" for tensors off CUDA, before any work is done (a
    CUDA machine without a usable extension gets cuSOLVER's own RuntimeError saying why)."""
    if not isinstance(backend, str) or backend not in EIGH_BACKENDS:
        raise ValueError(f"{name} must be one of {EIGH_BACKENDS}, got {backend!r}")
    if backend == "cusolver" and torch.device(device).type != "cuda":
        raise ValueError(f"{name}='cusolver' runs on CUDA tensors only; these are on {device} "
                         "(use 'auto' or 'torch')")


def eigh_backend(q: torch.Tensor, backend: str = "auto") -> str:
    """The backend `eigh(q, backend)` runs: "torch" or "cusolver"."""
    if backend not in EIGH_BACKENDS:
        raise ValueError(f"eigh backend must be one of {EIGH_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    # the extension has no autograd: a graph through eigh stays with torch
    wants_grad = q.requires_grad and torch.is_grad_enabled()
    if q.is_cuda and q.dtype in (torch.float32, torch.float64) and not wants_grad and cusolver.available():
        return "cusolver"
    return "torch"


def eigh(q: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Batched symmetric eigh (b, n, n) -> (b, n), (b, n, n), with the chosen backend
    ("auto": the fastest available, see the module docstring)."""
    if eigh_backend(q, backend) == "cusolver":
        return cusolver.eigh(q)
    return eigh_reference(q)


def dense_bytes_per_direction(d: int, itemsize: int) -> int:
    # eigenvectors and the solver's workspace beside Q itself
    return 3 * d * d * itemsize


def dense_topk(q: torch.Tensor, k: int, which: str, backend: str = "auto", residuals: bool = True):
    """Top-k eigenpairs of formed matrices q (b, d, d), symmetric at least to rounding (the
    eigensolver reads the lower triangle): values (b, k), vectors (b, d, k), relative residuals
    ‖Q v − λ v‖ / ‖Q‖ (b, k) by one GEMM of the k vectors against q, or None when not asked, and
    ‖Q‖ (b,), the exact spectral norm."""
    values, vectors = eigh(q, backend)
    idx = select(values, k, which)
    vals = torch.gather(values, -1, idx)
    norm = values.abs().amax(dim=-1)
    # Work on eigenvectors as rows: the solvers return column-major matrices, so the rows are
    # contiguous and picking, multiplying and norms all run along contiguous memory.
    if k == values.shape[-1] and which == "SA":
        rows = vectors.mT  # eigh's own order: nothing to pick
    else:
        rows = vectors.mT[torch.arange(len(idx), device=idx.device)[:, None], idx]  # (b, k, d)
    if not residuals:
        return vals, rows.mT, None, norm
    # vᵀ Q = (Q v)ᵀ for symmetric Q
    resid = torch.linalg.vector_norm(torch.baddbmm(rows * vals[:, :, None], rows, q, beta=-1), dim=-1)
    return vals, rows.mT, resid / torch.where(norm > 0, norm, torch.ones_like(norm))[:, None], norm
