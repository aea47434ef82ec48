"""Dense path: form Q chunk by chunk, batched symmetric eigh, select.

`eigh` is the dispatch point for batched eigensolvers; the plain-torch twin is torch.linalg.eigh.
"""
from __future__ import annotations

import torch

from .selection import gather_pairs, select


def eigh_reference(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched eigh in plain torch: eigenvalues ascending, eigenvectors as columns."""
    return torch.linalg.eigh(q)


def eigh(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched symmetric eigh (b, n, n) -> (b, n), (b, n, n), with the fastest available backend."""
    return eigh_reference(q)


def dense_bytes_per_direction(d: int, itemsize: int) -> int:
    # eigenvectors and the solver's workspace beside Q itself
    return 3 * d * d * itemsize


def dense_topk(q: torch.Tensor, k: int, which: str):
    """Top-k eigenpairs of formed matrices q (b, d, d): values (b, k), vectors (b, d, k) and
    relative residuals ‖Q v − λ v‖ / ‖Q‖ (b, k), with ‖Q‖ the exact spectral norm."""
    values, vectors = eigh(q)
    idx = select(values, k, which)
    vals, vecs = gather_pairs(values, vectors, idx)
    norm = values.abs().amax(dim=-1, keepdim=True)
    resid = torch.linalg.vector_norm(q @ vecs - vecs * vals[:, None, :], dim=-2)
    return vals, vecs, resid / torch.where(norm > 0, norm, torch.ones_like(norm))
