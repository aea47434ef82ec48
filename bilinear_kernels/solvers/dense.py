"""Dense path: form Q chunk by chunk, batched symmetric eigh, select.

`eigh` is the dispatch point for batched eigensolvers; the plain-torch twin is torch.linalg.eigh.
Backends: "torch" (torch.linalg.eigh), "cusolver" (the compiled extension's batched cuSOLVER
solver, solvers/cusolver.py, behind its canary: fast_path_guard), "auto" (the rule below).

Which route torch itself takes for a batch of CUDA matrices depends on its version:
  torch >= 2.12   cuSOLVER's batched syev (cusolverDnXsyevBatched) for every size;
  torch <= 2.11   batched Jacobi (syevjBatched) up to n = 32; above that a loop over the matrices,
                  one cuSOLVER call each: Jacobi (syevj) for float32 up to n = 512, syevd otherwise
                  (linalg_eigh_cusolver in ATen's BatchLinearAlgebraLib.cpp).
"auto" takes the extension only where torch loops one matrix at a time (torch <= 2.11, n > 32,
more than one matrix), for float32/float64 CUDA tensors without a gradient, when the extension is
loaded and its path has not been switched off. Where torch already batches, torch runs: no
committed GPU measurement shows the extension winning there. (benchmarks/bench_eigh.py records
the route and what one torch call launched on the GPU, to check this rule on a real card.)
"""
from __future__ import annotations

import math
import re

import torch

from .. import fast_path_guard as guard
from . import cusolver
from .selection import select

EIGH_BACKENDS = ("auto", "torch", "cusolver")
# the first torch release whose CUDA eigh batches every size through cusolverDnXsyevBatched
TORCH_BATCHES_EVERY_SIZE = (2, 12)
# up to this size torch <= 2.11 batches with syevjBatched; above it, it loops over the matrices,
# with single-matrix Jacobi for float32 up to TORCH_JACOBI_LOOP_MAX_N and syevd otherwise
TORCH_JACOBI_MAX_N = 32
TORCH_JACOBI_LOOP_MAX_N = 512


def eigh_reference(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched eigh in plain torch: eigenvalues ascending, eigenvectors as columns."""
    return torch.linalg.eigh(q)


def torch_version(text: str | None = None) -> tuple[int, int]:
    """(major, minor) of torch's version string ("2.11.0+cu128" -> (2, 11))."""
    match = re.match(r"(\d+)\.(\d+)", torch.__version__ if text is None else text)
    if match is None:
        raise ValueError(f"cannot read a torch version from {text!r}")
    return int(match.group(1)), int(match.group(2))


def torch_eigh_route(n: int, batch: int, dtype: torch.dtype = torch.float32, version: str | None = None) -> str:
    """The cuSOLVER route torch's CUDA eigh takes for `batch` matrices of size n, by its version's
    rule (see the module docstring): "syev_batched" or "syevj_batched" (one batched call),
    "syevj_loop" or "syevd_loop" (one call per matrix), or "single_matrix" (nothing to batch)."""
    if batch <= 1:
        return "single_matrix"
    if torch_version(version) >= TORCH_BATCHES_EVERY_SIZE:
        return "syev_batched"
    if n <= TORCH_JACOBI_MAX_N:
        return "syevj_batched"
    return "syevj_loop" if dtype == torch.float32 and n <= TORCH_JACOBI_LOOP_MAX_N else "syevd_loop"


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
    if not q.is_cuda or q.dtype not in (torch.float32, torch.float64) or wants_grad or q.ndim < 2:
        return "torch"
    if not torch_eigh_route(q.shape[-1], math.prod(q.shape[:-2]), q.dtype).endswith("_loop"):
        return "torch"  # torch batches these, or there is one matrix: nothing to win
    if cusolver.available() and guard.usable(guard.CUSOLVER_EIGH, q.dtype, None, q.device):
        return "cusolver"
    return "torch"


def eigh_canary(dtype: torch.dtype, device) -> tuple[float, float]:
    """(error, tolerance) of cusolver.eigh on two small fixed batches, one on each side of the
    n = 32 switch of the extension's own rule, against float64 torch.linalg.eigh: the largest of
    the eigenvalue error, the residual ‖QV − VΛ‖ and ‖VᵀV − I‖, all over ‖Q‖; tolerance 4·n·eps,
    that of the extension's GPU tests."""
    g = torch.Generator().manual_seed(31)
    error, tol = 0.0, 0.0
    for batch, n in ((3, 12), (2, 40)):
        a = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
        q64 = (a + a.mT) / 2
        values, vectors = cusolver.eigh(q64.to(device=device, dtype=dtype))
        values, vectors = values.double().cpu(), vectors.double().cpu()
        ref = torch.linalg.eigvalsh(q64)
        scale = ref.abs().max().item()
        resid = (q64 @ vectors - vectors * values[:, None, :]).abs().max().item()
        ortho = (vectors.mT @ vectors - torch.eye(n, dtype=torch.float64)).abs().max().item()
        error = max(error, (values - ref).abs().max().item() / scale, resid / scale, ortho)
        tol = max(tol, 4 * n * torch.finfo(dtype).eps)
    return error, tol


def eigh(q: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Batched symmetric eigh (b, n, n) -> (b, n), (b, n, n), with the chosen backend
    ("auto": see the module docstring). cuSOLVER runs behind its canary: where it fails it (or a
    call raises), torch.linalg.eigh serves, with one warning."""
    if eigh_backend(q, backend) == "cusolver":
        if not cusolver.available():
            return cusolver.eigh(q)  # raises, saying why the extension cannot run
        return guard.run(guard.CUSOLVER_EIGH, q.dtype, None, q.device, cusolver.eigh, eigh_reference, (q,),
                         lambda: eigh_canary(q.dtype, q.device))
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
